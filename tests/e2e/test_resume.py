"""A `groundwork run` killed after research resumes from its checkpoint without researching
again (SQLite checkpointer, same --thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, groundwork
from tests.e2e.test_cli_run import PROMPT, script_research
from tests.support.scripted_llm import ScriptedLLM
from tests.support.stage_paths import expected_stages
from tests.support.web import WebServer

pytestmark = pytest.mark.slow


def test_killed_run_resumes_after_research_without_repeating_it(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM, web: WebServer
) -> None:
    script = script_research(tmp_path, web, scripted_llm)
    # a second grounded prompt for the resumed run (the first answer dies with the killed one)
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a matte orange quadcopter over a lake"})
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }
    hold = scripted_llm.block("GroundedPrompt")  # synthesize waits: research is finished
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli_entry", "run", PROMPT, "--thread", "t-resume"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert scripted_llm.arrived["GroundedPrompt"].wait(timeout=180), "synthesize never began"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    hold.set()
    time.sleep(0.5)  # let the held request finish against the dead client
    del scripted_llm.hold["GroundedPrompt"]
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs").exists() or not any(
        (d / "image.png").exists() for d in (tmp_path / "runs").iterdir()
    )
    research_calls = (tmp_path / "ddgs-calls.log").read_text().splitlines()
    assert sorted(research_calls) == [
        "images\tZephyr X1 drone photo",
        "text\tZephyr X1 drone design",
    ]

    resumed = groundwork(["run", PROMPT, "--thread", "t-resume"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    # no second research: the web was not asked again and gaps were not re-analysed
    assert (tmp_path / "ddgs-calls.log").read_text().splitlines() == research_calls
    assert len(scripted_llm.calls("GapReport")) == 1
    run_dir = next(d for d in (tmp_path / "runs").iterdir() if (d / "run.json").exists())
    record = json.loads((run_dir / "run.json").read_text())
    stages = [s["stage"] for s in record["stages"]]
    assert stages == expected_stages("planned", "intake", "analyze", "research", "finish")
    assert (run_dir / "image.png").exists()


def test_resume_with_a_different_prompt_is_refused(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM, web: WebServer
) -> None:
    script = script_research(tmp_path, web, scripted_llm)
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }
    scripted_llm.block("GroundedPrompt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli_entry", "run", PROMPT, "--thread", "t2"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert scripted_llm.arrived["GroundedPrompt"].wait(timeout=180)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    other = groundwork(["run", "a red bicycle", "--thread", "t2"], env, tmp_path)
    assert other.returncode == 2
    assert "unfinished run" in other.stderr and "Traceback" not in other.stderr
