"""The one protocol every embedder follows, plus device/dtype choice shared by the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from core.device import resolve_device, resolve_dtype
from core.errors import GroundworkError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

Modality = Literal["text", "image"]


class ModelUnavailable(GroundworkError):
    """A model's weights or config cannot be found locally (the message says where and how)."""


class EmbedderSpec(BaseModel):
    """What an index must remember about the vectors in it (kept in its manifest)."""

    name: str = Field(description="Backend-qualified model name, e.g. open_clip:ViT-B-32.")
    tag: str = Field(default="", description="Pretrained tag / weights file; '' = random init.")
    dim: int = Field(gt=0)
    metric: Literal["ip"] = Field(
        default="ip", description="Inner product over L2-normalized vectors = cosine."
    )


@runtime_checkable
class Embedder(Protocol):
    """Normalized float32 features, batched; text always, images when `modalities` says so."""

    spec: EmbedderSpec
    modalities: frozenset[Modality]

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...


def pick_device(requested: str = "auto") -> str:
    return resolve_device(requested, what="embedder")


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    return resolve_dtype(requested, device)


def hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
