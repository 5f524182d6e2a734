"""Device and dtype selection shared by every torch user (generator, CLIP, MiniLM).

One place decides, so the generator and the embedders never disagree about what "auto" means on a
host. torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from core.errors import GroundworkError

if TYPE_CHECKING:
    import torch

DTypeName = Literal["auto", "float32", "float16", "bfloat16"]


class DeviceError(GroundworkError):
    """An explicitly requested device is not there."""


def resolve_device(setting: str = "auto", *, what: str = "model") -> str:
    """auto = cuda > mps > cpu; an explicit device that is not there is an error, not a fallback."""
    import torch

    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"{what} device {setting!r} requested but torch sees no CUDA GPU (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); fix: set the device to auto "
            "or cpu, or install a CUDA build of torch"
        )
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """auto: bfloat16 on CUDA GPUs that support it (no fp16 VAE overflow), else float16 on
    CUDA/MPS, float32 on CPU (half precision on CPU is slow or unsupported)."""
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if setting != "auto":
        if setting not in names:
            raise GroundworkError(f"unknown dtype {setting!r}; use one of auto, {', '.join(names)}")
        return names[setting]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32
