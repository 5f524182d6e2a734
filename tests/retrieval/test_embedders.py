"""Embedders: the tiny open_clip model (local config, random init) and the packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.embedders import (
    Embedder,
    ModelUnavailable,
    create_embedder,
    list_backends,
    text_embedder_from_settings,
)
from retrieval.settings import RetrievalSettings


def test_tiny_clip_towers_are_batched_and_normalized(tiny_clip: str) -> None:
    emb = create_embedder("open_clip", tiny_clip, device="cpu", batch_size=2)
    assert isinstance(emb, Embedder)
    assert emb.spec.name == f"open_clip:{tiny_clip}" and emb.spec.dim == 32
    ims = [Image.new("RGB", (40 + i, 30), (i * 40, 10, 200)) for i in range(5)]
    iv = emb.embed_images(ims)
    tv = emb.embed_texts(["a red shoe", "a blue bag", "x"])
    assert iv.shape == (5, 32) and tv.shape == (3, 32)
    assert iv.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tv, axis=1), 1, atol=1e-5)
    # batching does not change results; random init is seeded, so a fresh model agrees
    other = create_embedder("open_clip", tiny_clip, device="cpu", batch_size=8, cache=False)
    np.testing.assert_allclose(other.embed_images(ims), iv, atol=1e-5)
    assert emb.embed_texts([]).shape == (0, 32)


def test_minilm_packaged_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = text_embedder_from_settings(RetrievalSettings(device="cpu"))
    assert emb.spec.dim == 384 and emb.modalities == frozenset({"text"})
    v = emb.embed_texts(
        ["red kangaroo", "largest kangaroo species in Australia", "a cup of coffee"]
    )
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    with pytest.raises(NotImplementedError, match="clip_model"):
        emb.embed_images([Image.new("RGB", (8, 8))])


def test_missing_text_model_says_where_and_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as err:
        create_embedder("sentence-transformers", "acme/no-such-model", device="cpu", cache=False)
    msg = str(err.value)
    assert "acme/no-such-model" in msg and "Hugging Face cache" in msg and "Fix" in msg


def test_uncached_pretrained_tag_is_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        create_embedder(
            "open_clip",
            "ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            device="cpu",
            cache_dir=tmp_path,
            cache=False,
        )
    msg = str(err.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert str(tmp_path) in msg and "ALLOW_DOWNLOAD" in msg


def test_bad_weights_file_or_tag_or_dir(tiny_clip: str, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not found: /nope/w.safetensors"):
        create_embedder("open_clip", tiny_clip, pretrained="/nope/w.safetensors", cache=False)
    with pytest.raises(ModelUnavailable, match="neither a pretrained tag"):
        create_embedder("open_clip", tiny_clip, pretrained="laion9b", cache=False)
    with pytest.raises(ModelUnavailable, match="open_clip_config.json"):
        create_embedder("open_clip", f"local-dir:{tmp_path}", cache=False)
    with pytest.raises(ModelUnavailable, match="downloads are off"):
        create_embedder("open_clip", "hf-hub:org/repo", cache=False)
    with pytest.raises(ValueError, match="Unknown embedder backend"):
        create_embedder("nope", "x")
    assert {"open_clip", "sentence-transformers"} <= set(list_backends())


def test_local_weights_file_roundtrip(tiny_clip: str, tmp_path: Path) -> None:
    """A weights file saved from a model loads back through the `pretrained` path."""
    import torch

    emb = create_embedder("open_clip", tiny_clip, device="cpu")
    w = tmp_path / "tiny.pt"
    torch.save(emb.model.state_dict(), w)  # type: ignore[attr-defined]
    again = create_embedder("open_clip", tiny_clip, pretrained=str(w), device="cpu", cache=False)
    assert again.spec.tag == str(w)
    np.testing.assert_allclose(again.embed_texts(["shoe"]), emb.embed_texts(["shoe"]), atol=1e-5)
