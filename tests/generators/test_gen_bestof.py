"""Best-of-N: N seeds as one pipeline call where the backend can, one result per seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, generate_many
from generators.diffusers_backend import DiffusersGenerator
from generators.noop import NoopGenerator
from generators.settings import GeneratorSettings

SEEDS = [11, 12, 13, 14]


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": "a red kangaroo", "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


@pytest.mark.slow
async def test_four_seeds_one_pipeline_call(
    tiny_settings: GeneratorSettings,
    store: ArtifactStore,
    pipeline_calls: Callable[[Any], list[dict[str, Any]]],
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        calls = pipeline_calls(g._loaded.pipe)
        progress: list[tuple[int, int]] = []
        results = await generate_many(g, req(), SEEDS, lambda i, n: progress.append((i, n)))
        assert len(calls) == 1
        assert calls[0]["num_images_per_prompt"] == 4 and len(calls[0]["generator"]) == 4
        singles = [await g.generate(req(seed=s)) for s in SEEDS]
    finally:
        await g.aclose()
    assert [r.seed for r in results] == SEEDS
    assert len({r.image.sha256 for r in results}) == 4
    assert [store.meta(r.image.sha256)["seed"] for r in results] == SEEDS
    assert [store.meta(r.image.sha256)["request_key"] for r in results] == [
        req(seed=s).idempotency_key() for s in SEEDS
    ]
    # Each batched image is the single run of its seed, up to rounding in the last bit of a
    # pixel (batch-size-dependent float kernels); different seeds differ by ~45 levels here.
    for batched, single in zip(results, singles, strict=True):
        a = np.asarray(store.open_image(batched.image.sha256), dtype=np.int16)
        b = np.asarray(store.open_image(single.image.sha256), dtype=np.int16)
        assert np.abs(a - b).max() <= 2


@pytest.mark.slow
async def test_many_seeds_are_chunked_by_max_batch_size(
    tiny_settings: GeneratorSettings,
    store: ArtifactStore,
    pipeline_calls: Callable[[Any], list[dict[str, Any]]],
) -> None:
    g = DiffusersGenerator(tiny_settings.model_copy(update={"max_batch_size": 2}), store)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        calls = pipeline_calls(g._loaded.pipe)
        results = await g.generate_many(req(), [1, 2, 3])
    finally:
        await g.aclose()
    assert [len(c["generator"]) if isinstance(c["generator"], list) else 1 for c in calls] == [2, 1]
    assert [r.seed for r in results] == [1, 2, 3]


async def test_generators_without_it_run_one_seed_after_another(store: ArtifactStore) -> None:
    noop = NoopGenerator(store)
    results = await generate_many(noop, req(), SEEDS)
    assert noop.calls == 4 and [r.seed for r in results] == SEEDS
    assert len({r.image.sha256 for r in results}) == 4
    assert await generate_many(noop, req(), []) == []
