"""open_clip image+text towers: any model name with a pretrained tag, a local weights file,
or `local-dir:` folder; never downloads unless allowed (and never when HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
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
    import torch
    from PIL import Image


def _resolve_cached_tag(model: str, tag_cfg: dict[str, Any], cache_dir: Path | None) -> str | None:
    """Where open_clip would have put the weights of a tag, if they are already there."""
    if "file" in tag_cfg:
        return str(tag_cfg["file"]) if os.path.isfile(tag_cfg["file"]) else None
    hf = tag_cfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(
                repo_id, name, cache_dir=str(cache_dir) if cache_dir else None
            )
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        target = folder / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _where_tag_looks(tag_cfg: dict[str, Any], cache_dir: Path | None) -> str:
    places = []
    if tag_cfg.get("hf_hub"):
        places.append(f"Hugging Face cache ({cache_dir or '$HF_HOME/hub'}) for {tag_cfg['hf_hub']}")
    if tag_cfg.get("url"):
        places.append(f"{cache_dir or '~/.cache/clip'}/{os.path.basename(tag_cfg['url'])}")
    return "; ".join(places) or "nowhere (the tag has no download location)"


class OpenClipEmbedder:
    """Why a class and not functions: model, preprocess and tokenizer load once and are reused."""

    modalities: frozenset[Modality] = frozenset({"text", "image"})

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        allow_download: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        heavy_imports("open_clip")  # not beside a pipeline load's imports (issue 21.3)
        import open_clip
        import torch

        self.device = pick_device(device)
        self.dtype: torch.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        kwargs: dict[str, Any] = {"device": self.device}
        if self.dtype == torch.float16:
            kwargs["precision"] = "fp16"
        elif self.dtype == torch.bfloat16:
            kwargs["precision"] = "bf16"
        weights = self._resolve_weights(
            open_clip, model_name, pretrained, allow_download, cache_dir, kwargs
        )
        try:
            # Random init is seeded so the same config gives the same vectors in every process
            # (an index built by `kb add` stays searchable by `kb search`).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name,
                    pretrained=weights,
                    cache_dir=str(cache_dir) if cache_dir else None,
                    **kwargs,
                )
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            raise ModelUnavailable(
                f"open_clip could not build '{model_name}' (pretrained={pretrained!r}): {exc}. "
                "Check the model name (open_clip.list_models() or a config added with "
                "open_clip.add_model_config) and the weights path."
            ) from exc
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        dim = int(getattr(model, "embed_dim", 0) or self._probe_dim())
        self.spec = EmbedderSpec(name=f"open_clip:{model_name}", tag=str(pretrained or ""), dim=dim)

    @staticmethod
    def _resolve_weights(
        open_clip: Any,
        model_name: str,
        pretrained: str | None,
        allow_download: bool,
        cache_dir: Path | None,
        kwargs: dict[str, Any],
    ) -> str | None:
        """Turn a tag into a local file before open_clip sees it, so a miss never downloads."""
        if model_name.startswith("local-dir:"):
            folder = Path(model_name.removeprefix("local-dir:"))
            if not (folder / "open_clip_config.json").is_file():
                raise ModelUnavailable(
                    f"CLIP model '{model_name}': no open_clip_config.json in {folder}. Point "
                    "clip_model at a folder holding open_clip_config.json and the weights file."
                )
            return None
        if model_name.startswith("hf-hub:") and not (allow_download and not hub_offline()):
            raise ModelUnavailable(
                f"CLIP model '{model_name}' would be fetched from the Hugging Face Hub, but "
                "downloads are off (retrieval.allow_download=false or HF_HUB_OFFLINE=1). Download "
                "it once with allow_download on, or save it to a folder and use 'local-dir:PATH'."
            )
        if not pretrained:
            return None
        if os.path.isfile(pretrained):
            return pretrained
        clean = model_name.replace("/", "-")
        tag_cfg = open_clip.get_pretrained_cfg(clean, pretrained)
        if not tag_cfg:
            if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
                raise ModelUnavailable(
                    f"CLIP weights file for '{model_name}' not found: {pretrained}. Fix the "
                    "path in retrieval.clip_pretrained (GROUNDWORK_RETRIEVAL__CLIP_PRETRAINED)."
                )
            tags = open_clip.list_pretrained_tags_by_model(clean)
            raise ModelUnavailable(
                f"'{pretrained}' is neither a pretrained tag of CLIP model '{model_name}' nor an "
                f"existing file. Known tags: {tags or 'none'}."
            )
        cached = _resolve_cached_tag(clean, tag_cfg, cache_dir)
        if cached is None:
            if allow_download and not hub_offline():
                return pretrained  # open_clip downloads it
            why = "HF_HUB_OFFLINE=1" if hub_offline() else "retrieval.allow_download=false"
            raise ModelUnavailable(
                f"Weights for CLIP model '{model_name}' tag '{pretrained}' are not cached "
                f"locally (looked in: {_where_tag_looks(tag_cfg, cache_dir)}) and downloads are "
                f"off ({why}). Fix: run once online with GROUNDWORK_RETRIEVAL__ALLOW_DOWNLOAD=1, "
                "or set retrieval.clip_pretrained to a local weights file."
            )
        # A file path skips open_clip's tag handling, so carry the tag's preprocessing over.
        for src, dst in (("mean", "image_mean"), ("std", "image_std")):
            if tag_cfg.get(src):
                kwargs[dst] = tuple(tag_cfg[src])
        for key in ("interpolation", "resize_mode"):
            if tag_cfg.get(key):
                kwargs[f"image_{key}"] = tag_cfg[key]
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        return cached

    def _probe_dim(self) -> int:
        return int(self.embed_texts(["probe"]).shape[1])

    @staticmethod
    def _normalize(feats: torch.Tensor) -> np.ndarray:
        import torch

        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
                out.append(self._normalize(self.model.encode_text(tokens)))
        return np.concatenate(out)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = torch.stack(
                    [self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]]
                ).to(self.device, dtype=self.dtype)
                out.append(self._normalize(self.model.encode_image(batch)))
        return np.concatenate(out)
