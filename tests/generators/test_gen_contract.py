"""One contract, every generator backend (as diffusers' tester mixins do for pipelines).

Parametrized over `generators.factory.BACKENDS`: a backend added to the registry is tested here
without editing this file (the default harness builds it from the registry with the tiny
pipeline's settings). Only backends that need a server get a harness of their own: the queue
runs against a private redis-server with an in-process worker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.artifacts import ArtifactStore
from core.errors import GroundworkError
from generators.base import (
    BatchGenerator,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    SeedBatchGenerator,
    Warmable,
    generate_many,
)
from generators.capabilities import GeneratorCapabilities, capabilities
from generators.factory import BACKENDS, find_backend, job_backend_names, make_generator
from generators.noop import NoopGenerator
from generators.settings import GeneratorSettings, QueueSettings

Harness = Callable[[GeneratorSettings, ArtifactStore], AbstractAsyncContextManager[Generator]]


def _queue_settings(redis_url: str = "redis://127.0.0.1:1/0") -> QueueSettings:
    prefix = f"contract{uuid.uuid4().hex[:6]}"
    return QueueSettings(
        redis_url=redis_url,
        key_prefix=prefix,
        stream=f"{prefix}:jobs",
        group=f"{prefix}-workers",
        dead_letter_stream=f"{prefix}:dead",
        job_timeout_s=60,
        block_ms=100,
        claim_interval_s=0.2,
    )


def _registry_harness(name: str) -> Harness:
    @asynccontextmanager
    async def harness(settings: GeneratorSettings, store: ArtifactStore) -> AsyncIterator[Any]:
        gen = make_generator(settings, _queue_settings(), store, backend=name)
        try:
            yield gen
        finally:
            await gen.aclose()

    return harness


def _queue_harness(redis_url: str) -> Harness:
    @asynccontextmanager
    async def harness(settings: GeneratorSettings, store: ArtifactStore) -> AsyncIterator[Any]:
        from generators.queue.worker import Worker

        qs = _queue_settings(redis_url)
        worker = Worker(NoopGenerator(store), qs, consumer="contract")
        task = asyncio.create_task(worker.run())
        gen = make_generator(settings, qs, store, backend="queue")
        try:
            yield gen
        finally:
            await gen.aclose()
            worker.request_stop()
            await asyncio.wait_for(task, 30)
            await worker.aclose()

    return harness


@pytest.fixture(params=sorted(BACKENDS))
def harness(request: pytest.FixtureRequest) -> Harness:
    name: str = request.param
    if name == "queue":
        return _queue_harness(request.getfixturevalue("redis_url"))
    return _registry_harness(name)


def req(**kw: Any) -> GenerationRequest:
    base: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64}
    return GenerationRequest.model_validate({**base, **kw})


def same_image(store: ArtifactStore, a: GenerationResult, b: GenerationResult) -> bool:
    """The same picture, up to the last bit of a pixel (batched float kernels round apart)."""
    x = np.asarray(store.open_image(a.image.sha256), dtype=np.int16)
    y = np.asarray(store.open_image(b.image.sha256), dtype=np.int16)
    return x.shape == y.shape and int(np.abs(x - y).max()) <= 2


def _check_result(
    result: GenerationResult, store: ArtifactStore, request: GenerationRequest
) -> None:
    assert isinstance(result, GenerationResult)
    assert result.seed == request.seed and result.mode == request.mode
    assert result.steps >= 1 and result.model
    assert store.exists(result.image.sha256)
    assert isinstance(store.open_image(result.image.sha256), Image.Image)
    assert len(result.references) == len(request.reference_images)


async def test_generate_stores_an_image_and_reports_progress(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    async with harness(tiny_settings, store) as gen:
        assert isinstance(gen, Generator)
        progress: list[tuple[int, int]] = []
        request = req(seed=3, steps=2)
        result = await gen.generate(request, lambda i, n: progress.append((i, n)))
        _check_result(result, store, request)
        assert progress, "no progress reported"
        assert progress[-1][0] == progress[-1][1]
        assert [i for i, _ in progress] == sorted(i for i, _ in progress)


async def test_same_request_same_image(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    async with harness(tiny_settings, store) as gen:
        a = await gen.generate(req(seed=5))
        b = await gen.generate(req(seed=5))
        assert a.image.sha256 == b.image.sha256


async def test_best_of_n_one_result_per_seed(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """`generate_many` works for every backend (batched where it is a SeedBatchGenerator),
    and each result equals what a single generate with that seed makes."""
    async with harness(tiny_settings, store) as gen:
        results = await generate_many(gen, req(), [7, 8])
        assert [r.seed for r in results] == [7, 8]
        alone = await gen.generate(req(seed=8))
        assert same_image(store, results[1], alone)
        assert await generate_many(gen, req(), []) == []


async def test_edit_modes_take_an_init_image(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    init = store.put_image(Image.new("RGB", (64, 64), (200, 30, 30)), {"prompt": "init"})
    mask = store.put_image(Image.new("L", (64, 64), 255), {"prompt": "mask"})
    async with harness(tiny_settings, store) as gen:
        for request in (
            req(mode="img2img", init_image=init.sha256, strength=0.5, steps=2),
            req(mode="inpaint", init_image=init.sha256, mask_image=mask.sha256, strength=0.85),
        ):
            _check_result(await gen.generate(request), store, request)


async def test_capabilities_answer_for_every_backend(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    async with harness(tiny_settings, store) as gen:
        caps = await capabilities(gen, settings=tiny_settings)
        assert isinstance(caps, GeneratorCapabilities)


async def test_optional_capabilities_keep_their_promises(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """What a backend claims through the capability protocols, it does."""
    async with harness(tiny_settings, store) as gen:
        if isinstance(gen, Warmable):
            await gen.warm(wait=True)
            await gen.warm(wait=True)  # idempotent
        if isinstance(gen, BatchGenerator):
            batch = await gen.generate_batch([req(seed=1), req(seed=2, prompt="a red barn")])
            assert [r.seed for r in batch] == [1, 2]
            assert same_image(store, batch[1], await gen.generate(req(seed=2, prompt="a red barn")))
        if isinstance(gen, SeedBatchGenerator):
            many = await gen.generate_many(req(), [4, 5])
            assert [r.seed for r in many] == [4, 5]


async def test_aclose_twice_is_harmless(
    harness: Harness, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    async with harness(tiny_settings, store) as gen:
        await gen.generate(req())
        await gen.aclose()
    # the harness closes it once more on exit


# -- the registry itself ---------------------------------------------------------------------


def test_registry_names_and_aliases() -> None:
    assert find_backend("diffusers") is find_backend("inprocess")
    assert find_backend(" Queue ") is BACKENDS["queue"]
    assert "queue" not in job_backend_names()
    assert {"diffusers", "noop"} <= set(job_backend_names())
    with pytest.raises(GeneratorError, match="unknown generator backend") as ei:
        find_backend("dall-e")
    assert isinstance(ei.value, GroundworkError) and "inprocess" in str(ei.value)


def test_worker_refuses_a_backend_that_cannot_serve_jobs(store: ArtifactStore) -> None:
    from generators.factory import build_job_generator

    with pytest.raises(GeneratorError, match="cannot serve queue jobs"):
        build_job_generator("queue", GeneratorSettings(), _queue_settings(), store)
    assert isinstance(
        build_job_generator("noop", GeneratorSettings(), _queue_settings(), store), NoopGenerator
    )
