"""The one protocol every embedder follows, plus device/dtype choice shared by the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

Modality = Literal["text", "image"]


class ModelUnavailable(RuntimeError):
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
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    """fp16 only where it is fast and safe (CUDA); half precision on CPU is slow or missing."""
    import torch

    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return names[requested]


def hub_offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
