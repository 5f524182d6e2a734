"""A tiny random-init open_clip model from a local config: tests and smoke runs, no download."""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "groundwork-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip(tmp_dir: Path) -> str:
    """Writes the config (open_clip names a model after its file) and registers it.

    Use the returned name as `RetrievalSettings.clip_model` with `clip_pretrained=None`.
    """
    import open_clip

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG), encoding="utf-8")
    open_clip.add_model_config(path)
    return TINY_CLIP_NAME
