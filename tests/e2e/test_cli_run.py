"""`groundwork run` end to end: the real CLI in a subprocess, a tiny random-init diffusers
pipeline, a scripted OpenAI-compatible server as LLM and critic, images from a loopback web
server. Only `ddgs.DDGS` is replaced (tests/support/cli_entry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import groundwork
from tests.support.scripted_llm import ScriptedLLM
from tests.support.stage_paths import expected_stages
from tests.support.web import WebServer, png_bytes

pytestmark = pytest.mark.slow

PROMPT = "a Zephyr X1 drone hovering over a mountain lake at dawn"


def script_research(tmp_path: Path, web: WebServer, llm: ScriptedLLM) -> Path:
    """The scripted world: one gap, one text hit, two images, a grounded prompt."""
    page = web.add("/zephyr-x1", "text/html", b"<html><body><p>The Zephyr X1</p></body></html>")
    img1 = web.add("/img/zephyr-front.png", "image/png", png_bytes((230, 120, 20), seed=1))
    img2 = web.add("/img/zephyr-side.png", "image/png", png_bytes((20, 120, 230), seed=2))
    ddgs_script = {
        "text": {
            "Zephyr X1 drone design": [
                {
                    "title": "Zephyr X1 launch review",
                    "href": page,
                    "body": "The Zephyr X1 is a matte orange foldable drone with four rotors.",
                }
            ]
        },
        "images": {
            "Zephyr X1 drone photo": [
                {"title": "Zephyr X1 front", "image": img1, "url": page, "width": 48, "height": 48},
                {"title": "Zephyr X1 side", "image": img2, "url": page, "width": 48, "height": 48},
            ]
        },
    }
    path = tmp_path / "ddgs-script.json"
    path.write_text(json.dumps(ddgs_script))
    llm.add(
        "GapReport",
        {
            "gaps": [
                {
                    "kind": "entity",
                    "span": "Zephyr X1 drone",
                    "why": "a 2026 product",
                    "text_queries": ["Zephyr X1 drone design"],
                    "image_queries": ["Zephyr X1 drone photo"],
                    "needs_reference": True,
                }
            ]
        },
    )
    llm.add(
        "GroundedPrompt",
        {
            "gen_prompt": "a matte orange foldable quadcopter drone with four rotors hovering over "
            "a mountain lake at dawn",
            "negative_prompt": "blurry",
            "reference_images": [{"img_id": "IMG_001", "note": "body shape and colour"}],
            "facts": [{"claim": "matte orange foldable body", "source_url": page}],
        },
    )
    # The grounded prompt is over the tiny pipeline's 77-token encoder: the LLM shortens it.
    llm.add(
        "ShortPrompt", {"prompt": "a matte orange foldable quadcopter drone over a lake at dawn"}
    )
    return path


def test_run_writes_image_dossier_and_run_json_with_one_edit_round(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM, web: WebServer
) -> None:
    script = script_research(tmp_path, web, scripted_llm)
    scripted_llm.add(
        "PromptPlan",
        {
            "requirements": [
                {"text": "orange drone", "kind": "attribute"},
                {"text": "four rotors", "kind": "count"},
            ]
        },
    )
    scripted_llm.add(
        "Verdict",
        {
            "checks": [
                {"requirement": "orange drone", "passed": True, "reason": "it is orange"},
                {"requirement": "four rotors", "passed": False, "reason": "the rotors are missing"},
            ],
            "score": 0.35,
            "edit_instruction": "add four visible rotors",
        },
        {
            "checks": [
                {"requirement": "orange drone", "passed": True},
                {"requirement": "four rotors", "passed": True},
            ],
            "score": 0.9,
        },
    )
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
        "GROUNDWORK_LLM__CRITIQUE_MODEL": "scripted-vlm",
    }
    proc = groundwork(
        ["run", PROMPT, "--width", "96", "--height", "64", "--max-rounds", "3"], env, tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert str(run_dir) in " ".join(proc.stdout.split())  # the CLI says where the run is

    with Image.open(run_dir / "image.png") as im:
        assert im.format == "PNG"
        assert im.size == (96, 64)

    record = json.loads((run_dir / "run.json").read_text())
    stages = [s["stage"] for s in record["stages"]]
    assert stages == expected_stages(
        "planned", "intake", "analyze", "research", "critique", "generate", "critique", "finish"
    )
    assert record["status"] == "done"
    assert [r["action"] for r in record["rounds"]] == ["img2img", "finish"]
    assert record["rounds"][1]["image"]["mode"] == "img2img"
    assert record["image_ids"].keys() == {"IMG_001", "IMG_002"}

    dossier = (run_dir / "dossier.md").read_text()
    assert "Zephyr X1 drone" in dossier  # the scripted gap
    assert "Zephyr X1 drone design" in dossier  # its query
    assert f"{web.url}/zephyr-x1" in dossier  # the source URL
    assert "IMG_001" in dossier and "**chosen**" in dossier
    # the tiny pipeline has no IP-Adapter: the reference is never claimed as used
    assert "**used**" not in dossier and "pixels reached the generator" not in dossier
    assert "did not reach the generator" in dossier  # and the user is told, with the reason
    assert "![IMG_001](refs/IMG_001.png)" in dossier
    with Image.open(run_dir / "refs" / "IMG_001.png") as ref:
        assert ref.size == (48, 48)
    assert "matte orange foldable quadcopter" in dossier  # the grounded prompt
    assert "### Round 1 — img2img" in dossier and "### Round 2 — finish" in dossier
    assert "add four visible rotors" in dossier

    # the critic really received the image, as a data URL, through the OpenAI protocol
    verdict_calls = scripted_llm.calls("Verdict")
    assert len(verdict_calls) == 2
    parts = verdict_calls[0]["messages"][-1]["content"]
    assert any(
        p.get("type") == "image_url" and p["image_url"]["url"].startswith("data:image/png;base64,")
        for p in parts
    )
    assert verdict_calls[0]["model"] == "scripted-vlm"
    # web images were downloaded from the loopback server
    assert "/img/zephyr-front.png" in web.hits and "/img/zephyr-side.png" in web.hits


def test_run_without_vision_model_says_so_once_and_finishes(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM, web: WebServer
) -> None:
    script = script_research(tmp_path, web, scripted_llm)
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }
    proc = groundwork(["run", PROMPT], env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("no vision model configured") == 1
    run_dir = next((tmp_path / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert [r["action"] for r in record["rounds"]] == ["skipped"]
    assert scripted_llm.calls("Verdict") == []
    with Image.open(run_dir / "image.png") as im:
        assert im.size == (64, 64)
