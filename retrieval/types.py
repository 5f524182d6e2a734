"""The names every other retrieval module shares: the hit model and the error hierarchy.

They live here, below `retrieval.api`, `retrieval.index` and `retrieval.kb`, so those modules
import this one instead of each other (no import cycle). Light on purpose: pydantic only.

Errors, all `GroundworkError`; the local-state ones are also `RuntimeError`, which the research
tools turn into a failed observation instead of an exception that ends the run:

    KnowledgeBaseUnavailable     no knowledge base / model cannot load / index unusable
      VectorIndexError           an index folder on disk cannot be used
        IndexMismatchError       built by another embedder (name, tag or dimension)
        IndexCorruptError        files missing, truncated, altered (checksum) or unreadable

    ImageTooLarge (ValueError)   a query image over the pixel cap (`similar_images`)

So `except KnowledgeBaseUnavailable` covers every local-state problem, and a caller that cares
why can catch the narrower class.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.errors import GroundworkError


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


class KnowledgeBaseUnavailable(GroundworkError, RuntimeError):
    """No knowledge base at the configured folder, its models cannot be loaded, or one of its
    indexes cannot be used (the message says which and how to fix it)."""


class VectorIndexError(KnowledgeBaseUnavailable):
    """Base class; `IndexMismatchError` and `IndexCorruptError` say what to do."""


class IndexMismatchError(VectorIndexError):
    """The index on disk was built by a different embedder (name, tag or dimension)."""


class IndexCorruptError(VectorIndexError):
    """Files of the live version are missing, altered, or disagree with the manifest."""


class ImageTooLarge(GroundworkError, ValueError):
    """A query image declares more pixels than `retrieval.max_image_pixels` (not decoded)."""
