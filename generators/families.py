"""Which family a diffusers model belongs to, and what that family can do with reference images.

The right IP-Adapter weights, whether reference images go in as edit images, which text
encoder bounds the prompt: all depend on the model family, not on the model id. The family is
read from the pipeline class and the UNet's `cross_attention_dim` (768: SD 1.x, 1024: SD 2.x,
2048: SDXL), either from a loaded pipeline or from the JSON configs in a folder / the HF cache,
so the agent can ask before any weights are loaded (also with the queue backend).

Pure Python plus huggingface_hub for cache lookups: no torch, no diffusers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal[
    "sd15",
    "sd2",
    "sdxl",
    "sd3",
    "flux",
    "flux_kontext",
    "flux2",
    "qwen_image",
    "qwen_image_edit",
    "qwen_image_edit_plus",
    "unknown",
]

_CROSS_ATTENTION_FAMILY: dict[int, Family] = {768: "sd15", 1024: "sd2", 2048: "sdxl"}

# Longest class-name prefix wins, so "FluxKontext" beats "Flux".
_CLASS_PREFIX_FAMILY: list[tuple[str, Family]] = [
    ("QwenImageEditPlus", "qwen_image_edit_plus"),
    ("QwenImageEdit", "qwen_image_edit"),
    ("QwenImage", "qwen_image"),
    ("FluxKontext", "flux_kontext"),
    ("Flux2", "flux2"),
    ("Flux", "flux"),
    ("StableDiffusion3", "sd3"),
    ("StableDiffusionXL", "sdxl"),
]

UNET_SD_CLASSES = ("StableDiffusion", "LatentConsistencyModel", "AltDiffusion")
"""Class-name prefixes of UNet pipelines whose family is read from cross_attention_dim."""


@dataclass(frozen=True)
class EditSpec:
    """A reference-conditioned editing pipeline: the images go in the `image` argument."""

    max_images: int
    takes_list: bool


EDIT_PIPELINES: dict[Family, EditSpec] = {
    # FluxKontextPipeline and QwenImageEditPipeline condition on one image.
    "flux_kontext": EditSpec(max_images=1, takes_list=False),
    "qwen_image_edit": EditSpec(max_images=1, takes_list=False),
    # QwenImageEditPlusPipeline (2509) is trained on 1-3 images; FLUX.2 takes up to 10.
    "qwen_image_edit_plus": EditSpec(max_images=3, takes_list=True),
    "flux2": EditSpec(max_images=10, takes_list=True),
}


@dataclass(frozen=True)
class IpAdapterSpec:
    """Where IP-Adapter weights live, as `pipe.load_ip_adapter` wants them."""

    repo: str
    subfolder: str
    weight_name: str


IP_ADAPTER_DEFAULTS: dict[Family, IpAdapterSpec] = {
    "sd15": IpAdapterSpec("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors"),
    "sdxl": IpAdapterSpec("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors"),
}
"""The default adapter per family (docs/generators.md has the table)."""

_NO_IP_ADAPTER_WHY: dict[Family, str] = {
    "sd2": "SD 2.x (cross_attention_dim 1024) has no official IP-Adapter (h94/IP-Adapter "
    "ships SD 1.5 and SDXL weights only)",
    "sd3": "no default IP-Adapter for SD3 in the table; set GROUNDWORK_GENERATOR__IP_ADAPTER "
    "to one trained for it",
    "flux": "no default IP-Adapter for FLUX.1 in the table; set GROUNDWORK_GENERATOR__IP_ADAPTER "
    "to one trained for it (e.g. XLabs-AI/flux-ip-adapter)",
}

IP_ADAPTER_MAX_IMAGES = 5
"""Reference images one IP-Adapter call takes (Gen-Searcher's answer holds at most 5)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the configs say about a pipeline, before or after loading it."""

    pipeline_class: str
    family: Family
    cross_attention_dim: int | None = None
    unet_in_channels: int | None = None
    has_unet: bool = False
    tokenizers: tuple[str, ...] = ()

    @property
    def edit(self) -> EditSpec | None:
        return EDIT_PIPELINES.get(self.family)

    @property
    def regional(self) -> bool:
        """Regional layouts blend UNet noise predictions: SD 1.x/2.x/SDXL-style pipelines."""
        return self.has_unet and self.pipeline_class.startswith(UNET_SD_CLASSES)


def detect_family(pipeline_class: str, cross_attention_dim: int | None = None) -> Family:
    """The family of a pipeline class; SD-style UNet classes are told apart by their UNet."""
    for prefix, family in _CLASS_PREFIX_FAMILY:
        if pipeline_class.startswith(prefix):
            return family
    if pipeline_class.startswith(UNET_SD_CLASSES) and cross_attention_dim is not None:
        return _CROSS_ATTENTION_FAMILY.get(int(cross_attention_dim), "unknown")
    return "unknown"


def default_ip_adapter(family: Family) -> tuple[IpAdapterSpec | None, str]:
    """The family's default IP-Adapter, or None and the reason there is none."""
    spec = IP_ADAPTER_DEFAULTS.get(family)
    if spec is not None:
        return spec, ""
    if family in EDIT_PIPELINES:
        return None, f"{family} takes reference images as edit images, not through an IP-Adapter"
    return None, _NO_IP_ADAPTER_WHY.get(
        family,
        f"no default IP-Adapter for model family {family!r}; set "
        "GROUNDWORK_GENERATOR__IP_ADAPTER, _SUBFOLDER and _WEIGHT_NAME to one trained for it",
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def info_from_configs(model_index: dict[str, Any], unet_config: dict[str, Any] | None) -> ModelInfo:
    """ModelInfo from a model_index.json and (if the pipeline has one) unet/config.json."""
    cls = str(model_index.get("_class_name", ""))
    unet = unet_config or {}
    cross = unet.get("cross_attention_dim")
    if isinstance(cross, list | tuple):
        cross = cross[0] if cross else None
    tokenizers = tuple(
        sorted(
            name
            for name, value in model_index.items()
            if name.startswith("tokenizer") and isinstance(value, list) and value[0] is not None
        )
    )
    return ModelInfo(
        pipeline_class=cls,
        family=detect_family(cls, _int(cross)),
        cross_attention_dim=_int(cross),
        unet_in_channels=_int(unet.get("in_channels")),
        has_unet=unet_config is not None,
        tokenizers=tokenizers,
    )


def info_from_pipeline(pipe: Any) -> ModelInfo:
    """ModelInfo of a loaded diffusers pipeline."""
    unet = getattr(pipe, "unet", None)
    config = dict(unet.config) if unet is not None else None
    index: dict[str, Any] = {"_class_name": type(pipe).__name__}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if getattr(pipe, name, None) is not None:
            index[name] = ["transformers", type(getattr(pipe, name)).__name__]
    return info_from_configs(index, config)


def model_file(model: str, filename: str, *, local_files_only: bool = True) -> Path | None:
    """A file of a model folder or a cached hub model; None when it is not there.

    Only looks (folder or HF cache); never downloads, so the answer costs milliseconds.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, filename)
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def model_info(model: str) -> ModelInfo | None:
    """ModelInfo read from the model's folder or the HF cache; None when its configs are absent."""
    index_path = model_file(model, "model_index.json")
    if index_path is None:
        return None
    index = json.loads(index_path.read_text())
    unet_path = None
    if isinstance(index.get("unet"), list) and index["unet"][0] is not None:
        unet_path = model_file(model, "unet/config.json")
    unet = json.loads(unet_path.read_text()) if unet_path is not None else None
    if unet is None and isinstance(index.get("unet"), list) and index["unet"][0] is not None:
        unet = {}  # a UNet pipeline whose UNet config is not cached: family from class only
    return info_from_configs(index, unet)
