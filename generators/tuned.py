"""Tuned generator folders (written by `groundwork tune feedback|curate`): a manifest naming the
base model, plus diffusers LoRA weights. Kept apart from the diffusers backend and free of heavy
imports, so every lookup that reads a model's configs or tokenizers (capabilities, the prompt
budget, the queue client's static capabilities) can map a tuned folder to its base model."""

from __future__ import annotations

import json
import re
from pathlib import Path

LORA_MANIFEST = "groundwork_lora.json"
"""A "tuned folder" holds this manifest naming its base model, and diffusers LoRA weights: used
as a model, it loads the base plus the LoRA."""
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id (`org/name`)."""
    if model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model:
        return True
    return Path(model).expanduser().exists() or not HUB_ID_RE.match(model)


def tuned_base(model: str) -> str:
    """The base model of a tuned folder (its configs and tokenizers are the base's), else
    `model` itself; never raises (a broken folder is reported when it is loaded)."""
    folder = Path(model).expanduser()
    manifest = folder / LORA_MANIFEST
    if not looks_like_path(model) or not manifest.is_file():
        return model
    if (folder / "model_index.json").is_file():
        return model
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["base_model"])
    except (OSError, ValueError, KeyError, TypeError):
        return model
