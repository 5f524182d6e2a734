"""Ctrl-C during `groundwork run` leaves promptly with exit 130, and the run resumes.

The real CLI in a subprocess, the scripted LLM, the tiny diffusers pipeline (its background
load imports torch in a worker thread, which Python cannot interrupt). SIGINT arrives while
synthesize waits for its LLM answer (research done). Issue 21.10 measured 4-14 s from Ctrl-C to
exit; the bound below is generous on purpose (a loaded CI machine), the real figure is printed
(`-s`) and the speed target lives in `python -m benchmarks.run latency`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, groundwork
from tests.e2e.test_cli_run import PROMPT, script_research
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import WebServer

pytestmark = pytest.mark.slow


def test_ctrl_c_exits_130_promptly_and_the_run_resumes(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM, web: WebServer
) -> None:
    script = script_research(tmp_path, web, scripted_llm)
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a matte orange quadcopter over a lake"})
    env = {
        **gw_env,
        "GROUNDWORK_TEST_DDGS_SCRIPT": str(script),
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
    }
    hold = scripted_llm.block("GroundedPrompt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli_entry", "run", PROMPT, "--thread", "t-int"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert scripted_llm.arrived["GroundedPrompt"].wait(timeout=180), "synthesize never began"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    hold.set()
    del scripted_llm.hold["GroundedPrompt"]
    print(f"\nCtrl-C to exit: {took:.2f} s")
    assert proc.returncode == 130, out
    assert took < 10, f"Ctrl-C took {took:.1f} s to exit"
    assert "interrupted" in out and "groundwork run --thread t-int" in out
    assert "Traceback" not in out

    resumed = groundwork(["run", "--thread", "t-int"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    assert len(scripted_llm.calls("GapReport")) == 1  # research was not done again
    assert any((d / "image.png").exists() for d in (tmp_path / "runs").iterdir())
