"""The web page at / in headless Chromium against the real server and the real Runner.

A link that carries a token and asks to auto-run (`/?token=...&autorun=1&prompt=...`, the
fixation attack of issue 22) runs nothing and leaves no token in the page or the address bar;
the prompt it carries is only shown. A token pasted by the user is kept in the tab's
sessionStorage, and a click runs the prompt: the stages stream in and the image shows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

from agent.settings import Settings
from tests.service.chromium import Chromium, chromium_path
from tests.service.conftest import ALICE, BOB, auth
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
    # the attacker's link: their token (BOB), auto-run, a prompt
    query = urlencode({"prompt": "a red apple on a table", "token": BOB, "autorun": "1"})
    with Chromium(tmp_path / "chromium-profile") as browser:
        tab = browser.open(f"{server.url}/?{query}")
        browser.wait_for(tab, "document.readyState === 'complete'", 30)
        time.sleep(1.0)  # an auto-run would have posted by now
        before = json.loads(
            browser.evaluate(
                tab,
                """JSON.stringify({
                  token: document.getElementById('token').value,
                  stored: sessionStorage.getItem('gw-token'),
                  prompt: document.getElementById('prompt').value,
                  status: document.getElementById('status').dataset.status,
                  href: location.href,
                })""",
            )
        )
        assert before["token"] == "" and before["stored"] is None
        assert before["prompt"] == "a red apple on a table" and before["status"] == "idle"
        assert BOB not in before["href"] and "autorun" not in before["href"]
        for token in (ALICE, BOB):
            runs = httpx.get(server.url + "/v1/runs", headers=auth(token)).json()["data"]
            assert runs == [], token  # nothing ran from the link

        # the user pastes their own token and clicks
        browser.evaluate(
            tab,
            f"""(() => {{
              const t = document.getElementById('token');
              t.value = {json.dumps(ALICE)};
              t.dispatchEvent(new Event('input'));
              document.getElementById('go').click();
            }})()""",
        )
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
                  stored: sessionStorage.getItem('gw-token'),
                  href: location.href,
                })""",
            )
        )
        shot = browser.screenshot(tab, tmp_path / "page.png")
    assert state["stored"] == ALICE  # kept for this tab after the paste
    assert len(httpx.get(server.url + "/v1/runs", headers=auth(ALICE)).json()["data"]) == 1
    assert httpx.get(server.url + "/v1/runs", headers=auth(BOB)).json()["data"] == []
    assert state["status"] == "done", state["error"]
    assert state["stages"] == STAGES
    assert state["width"] == 128
    assert "a red apple on a table" in state["revised"]
    assert state["dossier"] and state["dossier"] != "(no dossier)"
    assert ALICE not in state["href"]
    with Image.open(shot) as im:
        assert im.size[0] >= 1000
