"""Shared fixtures: a scripted OpenAI-compatible server, a loopback web server, the tiny
diffusers pipeline, and an environment that points every Groundwork path into tmp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import WebServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def scripted_llm() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM().start()
    yield server
    server.stop()


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Stable Diffusion pipeline folder (~170 KB), built from config offline."""
    from tests.support.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port for the whole session (never 6379's data)."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH (apt-get install redis-server)")
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture
def gw_env(tmp_path: Path, tiny_pipeline: Path) -> dict[str, str]:
    """Environment for a `groundwork` subprocess: everything under tmp_path, nothing online."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(REPO),
            "GROUNDWORK_GENERATOR__MODEL": str(tiny_pipeline),
            "GROUNDWORK_GENERATOR__WIDTH": "64",
            "GROUNDWORK_GENERATOR__HEIGHT": "64",
            "GROUNDWORK_GENERATOR__STEPS": "2",
            "GROUNDWORK_ARTIFACTS__ROOT": str(tmp_path / "artifacts"),
            "GROUNDWORK_CHECKPOINT_DB": str(tmp_path / "checkpoints.sqlite"),
            "GROUNDWORK_RUNS_DIR": str(tmp_path / "runs"),
            "GROUNDWORK_RETRIEVAL__KB_DIR": str(tmp_path / "kb"),
            "GROUNDWORK_TOOLS__CACHE_DIR": str(tmp_path / "tool-cache"),
            "GROUNDWORK_TOOLS__ALLOW_HOSTS": json.dumps(["127.0.0.1"]),
            "GROUNDWORK_TEST_DDGS_LOG": str(tmp_path / "ddgs-calls.log"),
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def groundwork(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (with only ddgs faked, see tests/support/cli_entry.py)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.support.cli_entry", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
