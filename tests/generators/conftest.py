"""Shared fixtures: one tiny random-init pipeline per session, a fresh artifact store per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from generators.settings import GeneratorSettings
from tests.support.worker_process import WorkerProcess as WorkerProc


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


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init SDXL pipeline (two text encoders, pooled embeds, time ids)."""
    from tests.support.tiny_pipeline import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "pipeline")


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[dict[str, Any]]]:
    """`record(pipe)` -> the kwargs of every call of that pipeline class from now on."""

    def record(pipe: Any) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        cls = type(pipe)
        original = cls.__call__

        def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
        return calls

    return record


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
