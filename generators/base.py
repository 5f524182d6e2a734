"""The contract between the agent and whatever makes pixels.

The agent only ever sees these types: an in-process diffusers pipeline, a Redis-queued GPU
worker or a remote deployment all sit behind `Generator`. Requests and results carry artifact
hashes, never image bytes, so they can go through checkpoints and queues unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, model_validator

from core.artifacts import ArtifactRef
from core.errors import GroundworkError
from generators.layout import RegionalLayout

GenerationMode = Literal["text2img", "img2img", "inpaint"]

ReferenceHow = Literal["ip_adapter", "img2img_init", "edit_image", "none"]
"""How a reference image's pixels reached the generator (none: they did not)."""


class GenerationRequest(BaseModel):
    """One image to make. Every field that changes the pixels is part of `idempotency_key()`."""

    prompt: str
    negative_prompt: str = ""
    mode: GenerationMode = "text2img"
    model: str | None = Field(
        default=None, description="Diffusers id or local folder; None = the generator's default."
    )
    width: int = 512
    height: int = 512
    steps: int | None = Field(default=None, description="None = the generator's default.")
    guidance_scale: float | None = Field(default=None, description="None = generator default.")
    seed: int = 0
    strength: float = Field(
        default=0.6, ge=0.0, le=1.0, description="img2img/inpaint: how far from init_image."
    )
    init_image: str | None = Field(default=None, description="sha256 of the image to edit.")
    mask_image: str | None = Field(default=None, description="sha256 of the inpaint mask.")
    reference_images: list[str] = Field(
        default_factory=list, description="sha256s of reference images (IP-Adapter when set up)."
    )
    scheduler: str | None = None
    layout: RegionalLayout | None = Field(
        default=None,
        description="Regions with their own prompts (generators.layout); None = one prompt.",
    )

    def idempotency_key(self) -> str:
        """Same request, same key: used to return a stored result instead of generating twice."""
        data = self.model_dump(mode="json")
        if data.get("layout") is None:
            data.pop("layout", None)  # keys of requests without a layout stay what they were
        payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


class ReferenceUse(BaseModel):
    """What became of one reference image of a request: used is True only when its pixels
    conditioned the image; `why` says how, or why not (and how to fix it)."""

    sha256: str
    used: bool
    how: ReferenceHow = "none"
    why: str = ""


class GenerationResult(BaseModel):
    image: ArtifactRef
    seed: int
    model: str
    mode: GenerationMode
    steps: int
    device: str = ""
    elapsed_s: float = 0.0
    cached: bool = Field(
        default=False, description="True when an identical earlier result was reused."
    )
    references_used: int = Field(
        default=0,
        description="Reference images that conditioned the image; when `references` is given "
        "it is the number of them with used=True.",
    )
    references: list[ReferenceUse] = Field(
        default_factory=list,
        description="One entry per reference image of the request, in request order.",
    )
    job_id: str | None = Field(default=None, description="Queue job id when made by a worker.")

    @model_validator(mode="after")
    def _count_used(self) -> GenerationResult:
        if self.references:
            self.references_used = sum(r.used for r in self.references)
        return self


ProgressCallback = Callable[[int, int], None]
"""Called with (step, total_steps) while an image is being made."""


@runtime_checkable
class Generator(Protocol):
    """Anything that turns a `GenerationRequest` into a stored image."""

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class JobGenerator(Protocol):
    """A generator a queue worker can serve: it polls `should_cancel` between steps."""

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...

    async def aclose(self) -> None: ...


# -- optional capabilities: checked with isinstance(), never found by getattr ---------------
# (the describing ones, `capabilities()` and `prompt_budget()`, are declared beside the types
# they return: generators.capabilities.Describes and generators.prompt_budget.CountsTokens)


@runtime_checkable
class Warmable(Protocol):
    """Loads its model ahead of the first request (and, when its settings ask, makes one
    warm-up image). `wait=False` starts it in the background and returns at once; the first
    `generate` that needs the model awaits the same load and raises its error."""

    async def warm(self, model: str | None = None, *, wait: bool = False) -> None: ...


@runtime_checkable
class BatchGenerator(Protocol):
    """Runs several requests in one call (compatible ones share a pipeline call): a queue
    worker hands it up to `max_batch_size` jobs of one read."""

    async def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: Sequence[ProgressCallback | None] | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...


@runtime_checkable
class SeedBatchGenerator(Protocol):
    """Makes one request with several seeds at once (best-of-N in one pipeline call)."""

    async def generate_many(
        self,
        request: GenerationRequest,
        seeds: Sequence[int],
        on_progress: ProgressCallback | None = None,
    ) -> list[GenerationResult]: ...


@runtime_checkable
class NamesModel(Protocol):
    """Knows the model it uses when a request names none."""

    @property
    def default_model(self) -> str | None: ...


def default_model_of(generator: object) -> str | None:
    return generator.default_model if isinstance(generator, NamesModel) else None


async def generate_many(
    generator: Generator,
    request: GenerationRequest,
    seeds: Sequence[int],
    on_progress: ProgressCallback | None = None,
) -> list[GenerationResult]:
    """The same request with each of `seeds` (best-of-N), one result per seed, in order.

    A generator with its own `generate_many` (the diffusers backend: one batched pipeline call)
    does it at once; any other `Generator` (the queue client, noop) gets one `generate` per
    seed, one after the other. Each result equals what `generate(request with that seed)` gives.
    """
    if isinstance(generator, SeedBatchGenerator):
        return await generator.generate_many(request, list(seeds), on_progress)
    return [
        await generator.generate(request.model_copy(update={"seed": s}), on_progress) for s in seeds
    ]


class GeneratorError(GroundworkError):
    """A generation failed for a reason the user can act on (message says what and how)."""

    retryable: ClassVar[bool] = True
    """False when running the same request again cannot succeed: a queue worker dead-letters
    such a job at once instead of spending its retries (and GPU time) on it."""


class GenerationCancelled(GeneratorError):
    """The job was cancelled (by `cancel(job_id)` or by shutting down) before it finished."""


class ModelNotFoundError(GeneratorError):
    """The requested model is neither a local folder nor available from the hub cache/network."""

    retryable: ClassVar[bool] = False


class JobLostError(GeneratorError):
    """A queued or running job vanished from Redis (restarted without persistence, or flushed):
    nobody will finish it, so its client is told at once instead of waiting out the timeout."""
