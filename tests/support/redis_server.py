"""Start a private, throw-away redis-server (tests, benchmarks, demos).

Hermetic on purpose: a free port, a temporary directory, no persistence unless asked, so
nothing touches a Redis the user already runs on 6379. `crash()` and `restart()` keep the port
and the data directory, so clients and workers see the same server come back: empty without
persistence, with every acknowledged write with `appendonly=True` (fsync on every write).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """`with RedisServer() as r: r.url` -> redis://127.0.0.1:<port>/0, stopped on exit."""

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        startup_timeout_s: float = 10.0,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError(
                "redis-server is not on PATH; install it (apt-get install redis-server, "
                "brew install redis) or run `docker run -p 6379:6379 redis:8`"
            )
        self.exe = exe
        self.port = port or free_port()
        self.appendonly = appendonly
        self.startup_timeout_s = startup_timeout_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gw-redis-")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                self._tmp.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):  # not LOADING: the data is back
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def crash(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the AOF (if on) already holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, *, appendonly: bool | None = None, down_s: float = 0.0) -> RedisServer:
        """Crash and start again on the same port and directory, after `down_s` seconds."""
        self.crash()
        if appendonly is not None:
            self.appendonly = appendonly
        if down_s:
            time.sleep(down_s)
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
