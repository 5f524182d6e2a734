"""Shared fixtures: one tiny random-init pipeline per session, a fresh artifact store per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generators.artifacts import ArtifactStore
from generators.settings import GeneratorSettings
from generators.worker_process import WorkerProcess as WorkerProc


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline: Path) -> Path:
    """The session's one tiny pipeline (built in tests/conftest.py), not a second build; torch
    stays pinned to one thread here as these tests always ran."""
    import torch

    torch.set_num_threads(1)
    return tiny_pipeline


@pytest.fixture(scope="session")
def tiny_settings(tiny_pipeline_dir: Path) -> GeneratorSettings:
    return GeneratorSettings(
        model=str(tiny_pipeline_dir),
        device="cpu",
        steps=2,
        guidance_scale=0.0,
        width=64,
        height=64,
        local_files_only=True,
    )


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may reach the hub, whatever the machine's environment says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield


# -- Redis and worker processes ---------------------------------------------------------


@pytest.fixture
def spawn_worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProc]]:
    procs: list[WorkerProc] = []
    logdir = tmp_path_factory.mktemp("worker-logs")

    def spawn(**kw: Any) -> WorkerProc:
        p = WorkerProc(**{"redis_url": redis_url, "logdir": logdir, **kw})
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.stop()
