"""Embedders behind one protocol, built by name through a small registry (like open_clip's).

`create_embedder("open_clip", model, pretrained=...)` or `("sentence-transformers", model)`;
other backends register a factory with `register_backend`. Heavy imports happen inside the
factories, so importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from retrieval.embedders.base import (
    Embedder,
    EmbedderSpec,
    Modality,
    ModelUnavailable,
    pick_device,
    pick_dtype,
)

if TYPE_CHECKING:
    from retrieval.settings import RetrievalSettings

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "Modality",
    "ModelUnavailable",
    "clip_embedder_from_settings",
    "create_embedder",
    "list_backends",
    "pick_device",
    "pick_dtype",
    "register_backend",
    "text_embedder_from_settings",
]

Factory = Callable[..., Embedder]
_BACKENDS: dict[str, Factory] = {}
_CACHE: dict[tuple[Any, ...], Embedder] = {}


def register_backend(name: str, factory: Factory) -> None:
    _BACKENDS[name] = factory


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def _open_clip(model: str, **kwargs: Any) -> Embedder:
    from retrieval.embedders.open_clip_embedder import OpenClipEmbedder

    return OpenClipEmbedder(model, **kwargs)


def _sentence_transformers(model: str, **kwargs: Any) -> Embedder:
    from retrieval.embedders.sentence_embedder import SentenceTransformerEmbedder

    kwargs.pop("pretrained", None)
    return SentenceTransformerEmbedder(model, **kwargs)


register_backend("open_clip", _open_clip)
register_backend("sentence-transformers", _sentence_transformers)


def create_embedder(backend: str, model: str, *, cache: bool = True, **kwargs: Any) -> Embedder:
    """Models are cached per process (keyed by every argument) so tools don't reload weights."""
    if backend not in _BACKENDS:
        raise ValueError(f"Unknown embedder backend '{backend}'. Known: {list_backends()}.")
    key = (backend, model, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if cache and key in _CACHE:
        return _CACHE[key]
    emb = _BACKENDS[backend](model, **kwargs)
    if cache:
        _CACHE[key] = emb
    return emb


def _common(settings: RetrievalSettings) -> dict[str, Any]:
    return {
        "device": settings.device,
        "dtype": settings.dtype,
        "batch_size": settings.batch_size,
        "allow_download": settings.allow_download,
        "cache_dir": settings.model_cache_dir,
    }


def clip_embedder_from_settings(settings: RetrievalSettings) -> Embedder | None:
    if not settings.clip_model:
        return None
    return create_embedder(
        "open_clip", settings.clip_model, pretrained=settings.clip_pretrained, **_common(settings)
    )


def text_embedder_from_settings(settings: RetrievalSettings) -> Embedder:
    return create_embedder("sentence-transformers", settings.text_model, **_common(settings))
