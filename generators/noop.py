"""A generator that makes no pixels worth looking at, fast and deterministically.

It measures the queue's own overhead (benchmarks) and drives worker tests without a model:
the image is a flat colour derived from the request, so identical requests give identical
bytes and the content-addressed store behaves exactly as with a real model.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from core.artifacts import ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    ProgressCallback,
    ReferenceUse,
)


class NoopGenerator:
    """`delay_s` spread over the steps simulates GPU time; `fail_prompt` makes chosen jobs fail."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        delay_s: float = 0.0,
        steps: int = 2,
        size: int = 8,
        fail_prompt: str | None = None,
    ) -> None:
        self.store = store
        self.delay_s = delay_s
        self.steps = steps
        self.size = size
        self.fail_prompt = fail_prompt
        self.calls = 0

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        from PIL import Image

        self.calls += 1
        t0 = time.perf_counter()
        if self.fail_prompt is not None and self.fail_prompt in request.prompt:
            raise GeneratorError(f"noop generator told to fail on prompt {request.prompt!r}")
        steps = request.steps or self.steps
        for i in range(steps):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled("generation cancelled")
            if self.delay_s:
                await asyncio.sleep(self.delay_s / steps)
            if on_progress is not None:
                on_progress(i + 1, steps)
        digest = hashlib.sha256(request.idempotency_key().encode()).digest()
        image = Image.new("RGB", (self.size, self.size), (digest[0], digest[1], digest[2]))
        ref = self.store.put_image(
            image,
            {
                "prompt": request.prompt,
                "seed": request.seed,
                "model": request.model or "noop",
                "mode": request.mode,
                "steps": steps,
                "request_key": request.idempotency_key(),
                "generator": "noop",
            },
        )
        return GenerationResult(
            image=ref,
            seed=request.seed,
            model=request.model or "noop",
            mode=request.mode,
            steps=steps,
            device="none",
            elapsed_s=time.perf_counter() - t0,
            references=[
                ReferenceUse(sha256=sha, used=False, why="the noop generator ignores references")
                for sha in request.reference_images
            ],
        )

    async def aclose(self) -> None:
        return None
