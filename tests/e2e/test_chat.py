"""`groundwork chat`: new image, then a refinement, on one thread; `--thread` continues it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.slow


def _chat(args: list[str], stdin: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.cli_entry", "chat", *args],
        input=stdin,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_chat_new_then_refine_then_continue_thread(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM
) -> None:
    env = {
        **gw_env,
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }
    scripted_llm.add("GapReport", {"gaps": []})
    scripted_llm.add("Intent", {"kind": "refine", "instruction": "make it night"})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a lighthouse on a cliff at night"})
    script = "a lighthouse on a cliff\nmake it night\n/quit\n"
    out = _chat(["--thread", "c1"], script, env, tmp_path)
    assert out.count("run folder:") == 2
    records = sorted(
        (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")),
        key=lambda r: r["turn"],
    )
    assert [r["turn"] for r in records] == [1, 2]
    assert {r["thread_id"] for r in records} == {"c1"}
    assert records[1]["rounds"][0]["image"]["mode"] == "img2img"
    assert records[1]["prompt"] == "a lighthouse on a cliff; make it night"

    scripted_llm.add("Intent", {"kind": "new"})
    scripted_llm.add("GapReport", {"gaps": []})
    out = _chat(["--thread", "c1"], "a red bicycle\n", env, tmp_path)  # EOF ends the chat
    assert "current image prompt: a lighthouse on a cliff; make it night" in out
    run_files = (tmp_path / "runs").glob("*/run.json")
    turns = sorted(json.loads(p.read_text())["turn"] for p in run_files)
    assert turns == [1, 2, 3]
