"""Re-rank arbitrary candidate images (web image results) against a text query with CLIP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.embedders import Embedder
    from retrieval.settings import RetrievalSettings


class ClipImageRanker:
    """Implements `retrieval.api.ImageRanker`: cosine(text, image) per candidate, in input order."""

    def __init__(self, embedder: Embedder) -> None:
        if "image" not in embedder.modalities:
            raise ValueError(f"{embedder.spec.name} cannot embed images; a CLIP model is needed.")
        self.embedder = embedder

    @classmethod
    def from_settings(cls, settings: RetrievalSettings) -> ClipImageRanker:
        from retrieval.embedders import clip_embedder_from_settings

        embedder = clip_embedder_from_settings(settings)
        if embedder is None:
            raise ValueError(
                "No CLIP model configured (retrieval.clip_model is empty); set it to an open_clip "
                "model name, e.g. GROUNDWORK_RETRIEVAL__CLIP_MODEL=ViT-B-32."
            )
        return cls(embedder)

    def rank(self, query: str, images: list[Image.Image]) -> list[float]:
        if not images:
            return []
        text = self.embedder.embed_texts([query])[0]
        feats = self.embedder.embed_images(images)
        return [float(x) for x in feats @ text]

    def order(self, query: str, images: list[Image.Image]) -> list[tuple[int, float]]:
        """(candidate index, score), best first: what a caller usually wants after `rank`."""
        scores = np.asarray(self.rank(query, images))
        idx = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in idx]
