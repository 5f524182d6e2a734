"""What the rest of Groundwork may call in `retrieval/` (the research tools use this).

Implementations live beside this file; callers import only these names so the index and
embedder machinery (torch, faiss, open_clip) loads lazily, when first needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from retrieval.types import (
    ImageTooLarge,
    IndexCorruptError,
    IndexMismatchError,
    KBHit,
    KnowledgeBaseUnavailable,
    VectorIndexError,
)

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.settings import RetrievalSettings

__all__ = [
    "ImageRanker",
    "ImageTooLarge",
    "IndexCorruptError",
    "IndexMismatchError",
    "KBHit",
    "KnowledgeBaseAPI",
    "KnowledgeBaseUnavailable",
    "VectorIndexError",
    "make_image_ranker",
    "open_knowledge_base",
]


class KnowledgeBaseAPI(Protocol):
    def search_passages(self, query: str, top_k: int = 5) -> list[KBHit]: ...

    def search_images(self, query: str, top_k: int = 5) -> list[KBHit]: ...

    def similar_images(self, image: Path | Image.Image, top_k: int = 5) -> list[KBHit]: ...


class ImageRanker(Protocol):
    """Scores candidate images against a text query (CLIP cosine similarity, higher = closer)."""

    def rank(self, query: str, images: list[Image.Image]) -> list[float]: ...


def open_knowledge_base(settings: RetrievalSettings) -> KnowledgeBaseAPI:
    """Raises only `KnowledgeBaseUnavailable` (or a subclass: a corrupt or mismatched index),
    never a faiss/numpy error: the caller turns it into a failed tool call, not a crash."""
    from retrieval.kb import KnowledgeBase  # lazy: torch/faiss only when used

    return KnowledgeBase.open(settings)


def make_image_ranker(settings: RetrievalSettings) -> ImageRanker | None:
    """None when no CLIP model is configured (ranking is then skipped, not faked)."""
    if not settings.clip_model:
        return None
    from retrieval.ranking import ClipImageRanker

    return ClipImageRanker.from_settings(settings)
