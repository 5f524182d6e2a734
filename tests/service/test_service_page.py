"""The web page at / in headless Chromium against the real server and the real Runner: a prompt
submitted from the URL (?prompt=&token=&autorun=1), the stages stream in, the image shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from agent.settings import Settings
from tests.service.chromium import Chromium, chromium_path
from tests.service.conftest import ALICE
from tests.service.fakes import LiveServer
from tests.support.scripted_llm import ScriptedLLM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="chromium is not installed (apt-get update && apt-get install -y chromium)",
    ),
]

STAGES = ["intake", "analyze", "synthesize", "generate", "critique", "finish"]


def test_page_streams_stages_and_shows_the_image(
    tmp_path: Path,
    start_server: Callable[..., LiveServer],
    gw_settings: Settings,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.add("GapReport", {"gaps": []})
    settings = gw_settings.merged(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline), "width": 128, "height": 128},
        }
    )
    server = start_server(settings=settings, real=True)
    query = urlencode({"prompt": "a red apple on a table", "token": ALICE, "autorun": "1"})
    with Chromium(tmp_path / "chromium-profile") as browser:
        tab = browser.open(f"{server.url}/?{query}")
        browser.wait_for(tab, "document.getElementById('image').dataset.loaded === '1'", 90)
        state = json.loads(
            browser.evaluate(
                tab,
                """JSON.stringify({
                  status: document.getElementById('status').dataset.status,
                  stages: [...document.querySelectorAll('#stages li[data-stage]')]
                          .map(li => li.dataset.stage),
                  width: document.getElementById('image').naturalWidth,
                  dossier: document.getElementById('dossier').textContent,
                  revised: document.getElementById('revised').textContent,
                  error: document.getElementById('error').textContent,
                  href: location.href,
                })""",
            )
        )
        shot = browser.screenshot(tab, tmp_path / "page.png")
    assert state["status"] == "done", state["error"]
    assert state["stages"] == STAGES
    assert state["width"] == 128
    assert "a red apple on a table" in state["revised"]
    assert state["dossier"] and state["dossier"] != "(no dossier)"
    assert ALICE not in state["href"]  # the page took the token out of the address bar
    with Image.open(shot) as im:
        assert im.size[0] >= 1000
