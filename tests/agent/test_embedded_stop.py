"""Stopping the embedded LLM server while it starts (issue 21.10).

Ctrl-C (or the service shutting down) while the llama.cpp server loads used to wait for it to
become ready and then for it to go down again. `stop()` from another thread now ends the start
at once, and `Services.aclose()` uses it. The server here is a plain `sleep` under the real
guard (no llama.cpp needed): it never answers, as a server still loading its model does not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

import agent.embedded_llm as embedded_llm
from agent.embedded_llm import EmbeddedLLMError, EmbeddedLLMServer
from agent.services import Services
from agent.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _children(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    return [int(k) for t in tasks for k in (t / "children").read_text().split()]


@pytest.fixture
def never_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The llama.cpp command replaced by `sleep 600` under the real guard; spawned pids kept."""
    spawned: dict[str, Any] = {}
    real_spawn = embedded_llm.spawn_guarded
    real_find_spec = importlib.util.find_spec

    def spawn(cmd: list[str], log: IO[bytes]) -> Any:
        proc, lifeline = real_spawn(["sleep", "600"], log)
        spawned["guard"] = proc.pid
        return proc, lifeline

    def find_spec(name: str, *args: Any) -> Any:
        if name == "llama_cpp":  # the check in start(); nothing of llama.cpp is used here
            return object()
        return real_find_spec(name, *args)

    monkeypatch.setattr(embedded_llm, "spawn_guarded", spawn)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    spawned["gguf"] = gguf
    return spawned


def _wait_for_child(spawned: dict[str, Any], timeout: float = 15.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        guard = spawned.get("guard")
        kids = _children(guard) if isinstance(guard, int) else []
        if isinstance(guard, int) and kids:
            return guard, kids[0]
        time.sleep(0.02)
    raise AssertionError("the guard started no server")


def _gone(*pids: int, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while any(_running(p) for p in pids):
        assert time.monotonic() - start < timeout, f"still running: {pids}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_stop_from_another_thread_ends_a_start_at_once(never_ready: dict[str, Any]) -> None:
    server = EmbeddedLLMServer(never_ready["gguf"], timeout_s=120)
    failed: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except EmbeddedLLMError as exc:
            failed.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    guard, child = _wait_for_child(never_ready)
    stopped = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    took = time.monotonic() - stopped
    gone = _gone(guard, child)
    print(f"\nstop during start-up: start returned in {took:.2f} s, processes gone in {gone:.2f} s")
    assert not thread.is_alive()
    assert failed and "stopped while it was starting" in str(failed[0])
    with pytest.raises(EmbeddedLLMError, match="start a new one"):
        server.start()  # a stop is not forgotten by a later start (it may have come first)
    assert "guard" in never_ready and never_ready["guard"] == guard  # nothing spawned again


async def test_services_aclose_does_not_wait_for_the_server_to_come_up(
    never_ready: dict[str, Any], tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "llm": {"base_url": None, "embedded_gguf": str(never_ready["gguf"])},
            "artifacts": {"root": str(tmp_path / "artifacts")},
        }
    )
    services = Services(settings)
    task = services._embedded_start(settings)
    try:
        deadline = time.monotonic() + 15
        while "guard" not in never_ready or not _children(never_ready["guard"]):
            assert not task.done() and time.monotonic() < deadline, task
            await asyncio.sleep(0.02)  # the start runs in a thread: let the loop go on
        guard, child = _wait_for_child(never_ready)
    except BaseException:
        await services.aclose()
        raise
    closing = time.monotonic()
    await services.aclose()
    took = time.monotonic() - closing
    gone = _gone(guard, child)
    print(f"\nServices.aclose during start-up: {took:.2f} s, processes gone in {gone:.2f} s")
    assert task.done() and isinstance(task.exception(), EmbeddedLLMError)
    assert took < 10  # was: the start-up timeout (120 s here), then the stop


def _depth(exc: BaseException) -> int:
    tb, n = exc.__traceback__, 0
    while tb is not None:
        tb, n = tb.tb_next, n + 1
    return n


async def test_a_failed_start_is_raised_as_a_copy_each_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Re-raising the task's one exception grew its traceback by every caller's frames: each
    LLM call of a long chat kept its frames (and the run state in them) alive (issue 21.10)."""

    def fail(self: EmbeddedLLMServer) -> EmbeddedLLMServer:
        raise EmbeddedLLMError("no model here")

    monkeypatch.setattr(EmbeddedLLMServer, "start", fail)
    settings = Settings.model_validate(
        {"llm": {"base_url": None}, "artifacts": {"root": str(tmp_path / "artifacts")}}
    )
    services = Services(settings)
    raised: list[BaseException] = []
    try:
        for _ in range(5):
            with pytest.raises(EmbeddedLLMError, match="no model here") as info:
                await services._endpoint("analyze", settings)
            raised.append(info.value)
        task = services._embedded_task
        assert task is not None and task.done()
        stored = task.exception()
        assert stored is not None
        assert len({id(e) for e in raised}) == 5 and all(e is not stored for e in raised)
        assert len({_depth(e) for e in raised}) == 1  # no raise carries the earlier ones
        assert _depth(stored) < 10
    finally:
        await services.aclose()
