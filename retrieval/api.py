"""What the rest of Groundwork may call in `retrieval/` (the research tools use this).

Implementations live beside this file; callers import only these names so the index and
embedder machinery (torch, faiss, open_clip) loads lazily, when first needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.settings import RetrievalSettings


class KBHit(BaseModel):
    id: int = Field(description="Stable id of the entry in its index.")
    score: float
    kind: Literal["image", "text"]
    path: str | None = Field(default=None, description="Local file the entry came from.")
    url: str | None = None
    caption: str = ""
    text: str | None = Field(default=None, description="The passage, for text entries.")
    source: str = ""
    sha256: str = ""


class KnowledgeBaseUnavailable(RuntimeError):
    """No knowledge base at the configured folder, or its models cannot be loaded (says why)."""


class KnowledgeBaseAPI(Protocol):
    def search_passages(self, query: str, top_k: int = 5) -> list[KBHit]: ...

    def search_images(self, query: str, top_k: int = 5) -> list[KBHit]: ...

    def similar_images(self, image: Path | Image.Image, top_k: int = 5) -> list[KBHit]: ...


class ImageRanker(Protocol):
    """Scores candidate images against a text query (CLIP cosine similarity, higher = closer)."""

    def rank(self, query: str, images: list[Image.Image]) -> list[float]: ...


def open_knowledge_base(settings: RetrievalSettings) -> KnowledgeBaseAPI:
    from retrieval.kb import KnowledgeBase  # lazy: torch/faiss only when used

    return KnowledgeBase.open(settings)


def make_image_ranker(settings: RetrievalSettings) -> ImageRanker | None:
    """None when no CLIP model is configured (ranking is then skipped, not faked)."""
    if not settings.clip_model:
        return None
    from retrieval.ranking import ClipImageRanker

    return ClipImageRanker.from_settings(settings)
