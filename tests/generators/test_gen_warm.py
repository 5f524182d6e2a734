"""Warm-up: load the pipeline in the background once; generate awaits that same load."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GeneratorError, ModelNotFoundError
from generators.diffusers_backend import DiffusersGenerator
from generators.settings import GeneratorSettings


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": "a red kangaroo", "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


@pytest.mark.slow
async def test_warm_returns_at_once_and_generate_reuses_the_load(
    tiny_settings: GeneratorSettings, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    gate = threading.Event()
    original = g._load_resolved

    def slow_load(*args: Any) -> Any:
        assert gate.wait(30)
        return original(*args)

    monkeypatch.setattr(g, "_load_resolved", slow_load)
    try:
        await g.warm()  # returns while the load waits on the gate
        await g.warm()  # idempotent: still one load in flight
        assert g.loads == 0 and len(g._warming) == 1
        pending = asyncio.create_task(g.generate(req(seed=1)))
        await asyncio.sleep(0.05)
        assert not pending.done()  # waiting for the same load
        gate.set()
        first = await pending
        second = await g.generate(req(seed=2))
        await g.warm()
        assert g.loads == 1
        assert first.image.sha256 != second.image.sha256
    finally:
        gate.set()
        await g.aclose()


async def test_failed_warm_up_is_raised_by_generate(store: ArtifactStore, tmp_path: Path) -> None:
    g = DiffusersGenerator(
        GeneratorSettings(model=str(tmp_path / "missing"), local_files_only=True), store
    )
    await g.warm()  # does not raise: nobody needs the pipeline yet
    future = g._warming[g.settings.model]
    with contextlib.suppress(ModelNotFoundError):
        await asyncio.wrap_future(future)  # let the background load finish (and fail)
    warm_error = future.exception()
    assert isinstance(warm_error, ModelNotFoundError)
    with pytest.raises(ModelNotFoundError) as ei:
        await g.generate(req())
    assert ei.value is warm_error  # the same error, not a second load's
    assert "\n" not in str(ei.value) and str(tmp_path / "missing") in str(ei.value)
    assert g.loads == 0
    # Reported once; the next call tries again (the folder may have appeared meanwhile).
    with pytest.raises(ModelNotFoundError) as again:
        await g.warm(wait=True)
    assert again.value is not warm_error
    await g.aclose()


async def test_load_errors_become_one_line_generator_errors(
    tiny_settings: GeneratorSettings, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = DiffusersGenerator(tiny_settings, store)

    def broken(*args: Any) -> Any:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(g, "_load_resolved", broken)
    await g.warm()
    with pytest.raises(
        GeneratorError, match="loading generator model .* RuntimeError: CUDA out of memory.$"
    ):
        await g.generate(req())
    await g.aclose()
