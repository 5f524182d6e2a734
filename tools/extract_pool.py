"""Page reading where a timeout really stops it, with per-run fairness (issue 22.2).

A thread cannot be stopped: a hostile page whose parse outlived the tool timeout kept the
process alive for minutes after the run ended, and in `serve` one tenant's pages held the
shared thread pool that another tenant's image decodes needed. So `browse` reads pages in
worker processes (`tools.extract_worker`), and a page over its time limit gets its worker
killed (SIGKILL) and replaced: the work stops at once, the caller gets a failed observation.

Workers are shared by every toolkit of the process (`shared_pool()`), and slots are granted
fairly: each run ("tenant") holds at most `per_tenant` workers at once, and a freed worker goes
to the waiting tenant that holds the fewest, so one run's slow pages cannot take another run's
slots. The tenant is the run named by `run_scope(...)` around the run; without one, the
LangGraph thread the call runs in (`current_tenant`); outside a graph, the toolkit itself (one
toolkit per CLI run).

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot kill the one worker that runs a
given job (only the whole pool, which breaks it for everyone), and it forks or re-imports the
main module; a hand-held subprocess per slot with a framed pipe protocol is ~100 lines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from core.errors import GroundworkError
from tools.extract import PageLimits, PageReading
from tools.extract_worker import HEADER, READY

_TENANT: ContextVar[str | None] = ContextVar("groundwork_tool_tenant", default=None)
_REPO = Path(__file__).resolve().parents[1]
_START_TIMEOUT_S = 60.0


class ExtractError(GroundworkError):
    """A page could not be read: over its time limit, or the worker failed (message says)."""


@contextlib.contextmanager
def run_scope(run_id: str) -> Iterator[None]:
    """Name the run that the tool calls inside this block belong to (contextvars follow
    asyncio tasks, so LangGraph's node tasks inherit it). The shared extraction pool is fair
    between runs by this name."""
    token = _TENANT.set(run_id)
    try:
        yield
    finally:
        _TENANT.reset(token)


def current_tenant(default: str) -> str:
    """The run a tool call belongs to: `run_scope`'s name; else, inside a LangGraph node, the
    run's thread id (LangChain keeps the running config in a contextvar, so a service that
    shares one toolkit between runs is fair without any wiring); else `default`."""
    named = _TENANT.get()
    if named:
        return named
    try:
        from langchain_core.runnables.config import var_child_runnable_config
    except ImportError:  # the toolkit used without LangChain
        return default
    config = var_child_runnable_config.get() or {}
    thread = (config.get("configurable") or {}).get("thread_id")
    return f"thread:{thread}" if thread else default


class _Worker:
    """One worker process and its pipes; used by one job at a time."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in kill())
        cmd = [sys.executable, "-m", "tools.extract_worker", f"--parent={os.getpid()}"]
        cmd.append(f"--memory-mb={self.memory_mb}")
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            close_fds=True,
        )
        self.proc = proc
        try:
            ready = self._read(proc, time.monotonic() + _START_TIMEOUT_S)
        except ExtractError as exc:
            self.kill()
            raise ExtractError(f"page-reading worker did not start: {exc}") from exc
        if ready != READY:
            self.kill()
            raise ExtractError("page-reading worker did not start (unexpected greeting)")
        return proc

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""

    def _read_exact(self, proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                why = self._stderr_tail()
                raise ExtractError("the worker exited" + (f" ({why})" if why else ""))
            buf += chunk
        return bytes(buf)

    def _read(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
        (size,) = HEADER.unpack(self._read_exact(proc, HEADER.size, deadline))
        return self._read_exact(proc, size, deadline)

    def run(self, request: bytes, timeout_s: float) -> bytes:
        """Send one request and wait up to `timeout_s` for the answer; on timeout the worker is
        killed (the page's work stops now) and TimeoutError raised."""
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(HEADER.pack(len(request)) + request)
            proc.stdin.flush()
            return self._read(proc, time.monotonic() + timeout_s)
        except (TimeoutError, ExtractError, OSError, ValueError):
            self.kill()
            raise

    def interrupt(self) -> None:
        """SIGKILL the process now, from any thread; the thread running its job sees the pipe
        close and cleans up (`kill`)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


@dataclass
class _Waiter:
    tenant: str
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[_Worker]
    worker: _Worker | None = None


@dataclass
class PoolStats:
    granted: list[str] = field(default_factory=list)  # tenants in grant order (last 1000)
    peak_by_tenant: dict[str, int] = field(default_factory=dict)
    killed: int = 0


class ExtractPool:
    """`workers` page-reading processes shared fairly between tenants (see module docs)."""

    def __init__(self, workers: int = 2, *, per_tenant: int | None = None, memory_mb: int = 2048):
        if workers < 1:
            raise ValueError(f"extraction pool needs at least one worker, got {workers}")
        self.size = workers
        self.per_tenant = per_tenant or max(1, workers // 2)
        self._idle = [_Worker(memory_mb) for _ in range(workers)]
        self._all = list(self._idle)
        self._inflight: dict[str, int] = {}
        self._waiting: list[_Waiter] = []
        self._lock = threading.Lock()
        self.stats = PoolStats()
        self._closed = False

    # --- fair slot scheduling (thread-safe; waiters may live on different event loops) ----------

    def _dispatch_locked(self) -> None:
        while self._idle and self._waiting:
            eligible = [
                w for w in self._waiting if self._inflight.get(w.tenant, 0) < self.per_tenant
            ]
            if not eligible:
                return
            waiter = min(eligible, key=lambda w: self._inflight.get(w.tenant, 0))
            self._waiting.remove(waiter)
            worker = self._idle.pop()
            waiter.worker = worker
            n = self._inflight.get(waiter.tenant, 0) + 1
            self._inflight[waiter.tenant] = n
            peak = self.stats.peak_by_tenant
            peak[waiter.tenant] = max(peak.get(waiter.tenant, 0), n)
            self.stats.granted = [*self.stats.granted[-999:], waiter.tenant]
            waiter.loop.call_soon_threadsafe(_resolve, waiter.fut, worker)

    def _release(self, tenant: str, worker: _Worker) -> None:
        with self._lock:
            self._inflight[tenant] -= 1
            if not self._inflight[tenant]:
                del self._inflight[tenant]
            self._idle.append(worker)
            self._dispatch_locked()

    async def _acquire(self, tenant: str) -> _Worker:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise ExtractError("the page-reading pool is closed")
            self._waiting.append(waiter)
            self._dispatch_locked()
        try:
            return await waiter.fut
        except asyncio.CancelledError:
            with self._lock:
                if waiter.worker is None:
                    self._waiting.remove(waiter)
                    granted = None
                else:
                    granted = waiter.worker
            if granted is not None:
                self._release(tenant, granted)
            raise

    # --- jobs ------------------------------------------------------------------------------------

    async def read(
        self,
        text: str,
        *,
        is_html: bool,
        query: str,
        passage_chars: int,
        k: int,
        limits: PageLimits,
        timeout_s: float,
        tenant: str,
    ) -> PageReading:
        """`tools.extract.read_page` in a worker, killed if it takes over `timeout_s` (counted
        from when the page reaches the worker, not from the wait for a slot)."""
        request = json.dumps(
            {
                "text": text,
                "is_html": is_html,
                "query": query,
                "passage_chars": passage_chars,
                "k": k,
                "limits": asdict(limits),
            }
        ).encode()
        worker = await self._acquire(tenant)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def job() -> None:
            try:
                out: bytes | BaseException = worker.run(request, timeout_s)
            except (TimeoutError, ExtractError, OSError, ValueError) as exc:
                out = exc
            finally:
                self._release(tenant, worker)
            loop.call_soon_threadsafe(_deliver, done, out)

        # A daemon thread per job: it ends within `timeout_s` (the kill), and never holds up
        # the interpreter's exit the way an executor thread would.
        threading.Thread(target=job, name="gw-page-reader", daemon=True).start()
        try:
            raw = await asyncio.shield(done)
        except TimeoutError as exc:
            self.stats.killed += 1
            raise ExtractError(
                f"reading the page took longer than {timeout_s:g}s; its worker was stopped"
            ) from exc
        except asyncio.CancelledError:
            worker.interrupt()  # the caller gave up (tool deadline): stop the page's work now
            done.add_done_callback(_retrieve)
            raise
        try:
            reply: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise ExtractError(f"page-reading worker answered garbage: {exc}") from exc
        if not reply.get("ok"):
            raise ExtractError(str(reply.get("error") or "page could not be read"))
        return PageReading(
            title=str(reply.get("title") or ""),
            passages=[(str(t), float(s)) for t, s in reply.get("passages") or []],
            notes=[str(n) for n in reply.get("notes") or []],
            relevant=bool(reply.get("relevant", True)),
        )

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._all if w.proc is not None and w.proc.poll() is None]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for waiter in self._waiting:
                waiter.loop.call_soon_threadsafe(
                    _deliver, waiter.fut, ExtractError("the page-reading pool closed")
                )
            self._waiting.clear()
        for worker in self._all:
            worker.kill()


def _resolve(fut: asyncio.Future[_Worker], worker: _Worker) -> None:
    if not fut.done():
        fut.set_result(worker)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # nobody awaits it any more


def _deliver(fut: asyncio.Future[Any], out: object) -> None:
    if fut.done():
        return
    if isinstance(out, BaseException):
        fut.set_exception(out)
    else:
        fut.set_result(out)


_SHARED: ExtractPool | None = None
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int = 2, memory_mb: int = 2048) -> ExtractPool:
    """The process's one extraction pool (created on first use with these sizes)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ExtractPool(workers, memory_mb=memory_mb)
            atexit.register(_SHARED.close)
        return _SHARED
