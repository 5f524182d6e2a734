"""The contract between the agent and whatever makes pixels.

The agent only ever sees these types: an in-process diffusers pipeline, a Redis-queued GPU
worker or a remote deployment all sit behind `Generator`. Requests and results carry artifact
hashes, never image bytes, so they can go through checkpoints and queues unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

GenerationMode = Literal["text2img", "img2img", "inpaint"]


class ArtifactRef(BaseModel):
    """A pointer to bytes in the artifact store (content addressed by sha256)."""

    sha256: str = Field(description="Hex sha256 of the stored bytes; the artifact's identity.")
    uri: str = Field(description="Where the bytes can be read, e.g. file:///.../ab/cd/abcd....png")
    media_type: str = Field(default="image/png")
    width: int | None = None
    height: int | None = None


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

    def idempotency_key(self) -> str:
        """Same request, same key: used to return a stored result instead of generating twice."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


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
        default=0, description="Reference images that conditioned the image (IP-Adapter)."
    )
    job_id: str | None = Field(default=None, description="Queue job id when made by a worker.")


ProgressCallback = Callable[[int, int], None]
"""Called with (step, total_steps) while an image is being made."""


@runtime_checkable
class Generator(Protocol):
    """Anything that turns a `GenerationRequest` into a stored image."""

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult: ...

    async def aclose(self) -> None: ...


class GeneratorError(RuntimeError):
    """A generation failed for a reason the user can act on (message says what and how)."""


class GenerationCancelled(GeneratorError):
    """The job was cancelled (by `cancel(job_id)` or by shutting down) before it finished."""


class ModelNotFoundError(GeneratorError):
    """The requested model is neither a local folder nor available from the hub cache/network."""
