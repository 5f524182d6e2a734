"""Run `python -m cli.worker` as a child process (tests and benchmarks only: the product never
imports tests.support).

The worker is exercised exactly as an operator runs it: its own interpreter, flags, signals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self,
        *,
        name: str,
        redis_url: str,
        prefix: str,
        artifacts: Path,
        logdir: Path,
        model: str | None = None,
        backend: str = "diffusers",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Stream, group and dead-letter names derive from `prefix`, so runs never mix."""
        self.name = name
        self.prefix = prefix
        self.redis_url = redis_url
        self.log_path = logdir / f"worker-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        args = [
            sys.executable,
            "-m",
            "cli.worker",
            "--backend",
            backend,
            "--consumer",
            name,
            "--redis-url",
            redis_url,
            "--stream",
            f"{prefix}:jobs",
            "--group",
            f"{prefix}-workers",
            "--dead-letter-stream",
            f"{prefix}:dead",
            "--artifacts",
            str(artifacts),
            "--device",
            "cpu",
            "--local-files-only",
            *(extra or []),
        ]
        if model is not None:
            args += ["--model", model]
        full_env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "GROUNDWORK_QUEUE__KEY_PREFIX": prefix,
            "GROUNDWORK_QUEUE__CLAIM_INTERVAL_S": "0.5",
            "GROUNDWORK_QUEUE__BLOCK_MS": "200",
            **(env or {}),
        }
        logdir.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=logdir, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the worker's first heartbeat (model loaded, reading the stream)."""
        import redis

        r: Any = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
                if r.zscore(f"{self.prefix}:workers", self.name) is not None:
                    return
                time.sleep(0.05)
        finally:
            r.close()
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like an OOM kill or a lost host."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
