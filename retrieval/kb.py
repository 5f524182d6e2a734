"""The local knowledge base: a passages index (text embedder) and an images index (CLIP).

Folder layout under `settings.kb_dir`:

    passages/   VectorIndex of text chunks (sentence-transformers, default all-MiniLM-L6-v2)
    images/     VectorIndex of images (open_clip image tower; queried with its text tower)
    .lock       held by the one process writing (ingestion); readers never block

Without a CLIP model configured the knowledge base holds text passages only: image files are
skipped at ingestion with that reason, and image searches raise `KnowledgeBaseUnavailable`
saying how to configure one. Models load lazily, on the first search that needs them.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from retrieval.embedders import (
    Embedder,
    EmbedderSpec,
    ModelUnavailable,
    clip_embedder_from_settings,
    text_embedder_from_settings,
)
from retrieval.index import IndexConfig, VectorIndex, check_compatible
from retrieval.types import (
    ImageTooLarge,
    IndexCorruptError,
    IndexMismatchError,
    KBHit,
    KnowledgeBaseUnavailable,
)

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.settings import RetrievalSettings

Collection = Literal["passages", "images"]


def stable_id(key: str) -> int:
    """63-bit id from a key (kind, absolute path, chunk): the same file keeps its ids."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


def index_config(settings: RetrievalSettings) -> IndexConfig:
    return IndexConfig(
        kind=settings.index_kind,
        approx_threshold=settings.approx_threshold,
        nprobe=settings.ivf_nprobe,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_search=settings.hnsw_ef_search,
    )


def expected_name(settings: RetrievalSettings, which: Collection) -> tuple[str, str] | None:
    """(embedder name, tag) the settings would produce, known without loading any model."""
    if which == "passages":
        return f"sentence-transformers:{settings.text_model}", ""
    if not settings.clip_model:
        return None
    return f"open_clip:{settings.clip_model}", settings.clip_pretrained or ""


class CollectionStats(BaseModel):
    name: Collection
    count: int
    embedder: str
    tag: str
    dim: int
    kind: str
    files: int
    bytes_on_disk: int


class KBStats(BaseModel):
    kb_dir: str
    collections: list[CollectionStats] = Field(default_factory=list)
    clip_configured: bool


_STR_KEYS = ("kind", "caption", "source", "sha256")
_OPTIONAL_STR_KEYS = ("path", "url", "text")


def _check_meta(index: VectorIndex) -> None:
    """Sidecar rows must have the types a hit is built from, or a search would fail half-way
    with a validation error instead of refusing the index at open (cheap: ~50 ms per 100k)."""
    for id_, row in index.meta.items():
        bad = [k for k in _STR_KEYS if k in row and not isinstance(row[k], str)] + [
            k for k in _OPTIONAL_STR_KEYS if row.get(k) is not None and not isinstance(row[k], str)
        ]
        if bad:
            raise IndexCorruptError(
                f"Index at {index.path}: the sidecar row of id {id_} has a non-text {bad[0]!r}. "
                "Rebuild it: `groundwork kb add --rebuild PATH...` (re-ingests your files)."
            )


class KnowledgeBase:
    """Implements `retrieval.api.KnowledgeBaseAPI`; ingestion lives in `retrieval.ingest`."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.root = Path(settings.kb_dir)
        self.config = index_config(settings)
        self.indexes: dict[Collection, VectorIndex] = {}
        self._embedders: dict[Collection, Embedder] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, settings: RetrievalSettings, *, create: bool = False, rebuild: bool = False
    ) -> KnowledgeBase:
        """Refuses a missing folder unless `create` (KnowledgeBaseUnavailable), and an index
        built by another embedder (IndexMismatchError) or damaged (IndexCorruptError) unless
        `rebuild`, which deletes that index so ingestion starts it afresh. Every refusal is a
        `KnowledgeBaseUnavailable`, so callers need one except clause."""
        kb = cls(settings)
        try:
            present = kb.root.is_dir() and any(
                VectorIndex.exists(kb.root / c) for c in ("passages", "images")
            )
            if not present:
                if not create:
                    raise KnowledgeBaseUnavailable(
                        f"No knowledge base at {kb.root.resolve()}. Create one with "
                        "`groundwork kb add PATH...`, or point retrieval.kb_dir "
                        "(GROUNDWORK_RETRIEVAL__KB_DIR) at an existing one."
                    )
                kb.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KnowledgeBaseUnavailable(
                f"Knowledge base folder {kb.root} cannot be used ({exc.strerror or exc}); "
                "point retrieval.kb_dir (--kb-dir) at a writable folder."
            ) from exc
        for which in ("passages", "images"):
            kb._load(which, rebuild=rebuild)
        return kb

    def _load(self, which: Collection, *, rebuild: bool) -> None:
        path = self.root / which
        if not VectorIndex.exists(path):
            return
        try:
            manifest = VectorIndex.read_manifest(path)
            want = expected_name(self.settings, which)
            if want is not None and (manifest.embedder.name, manifest.embedder.tag) != want:
                want_spec = EmbedderSpec(name=want[0], tag=want[1], dim=manifest.embedder.dim)
                check_compatible(path, manifest.embedder, want_spec)
            index = VectorIndex.open(path, config=self.config)
            _check_meta(index)
            self.indexes[which] = index
        except (IndexMismatchError, IndexCorruptError):
            if rebuild:
                self.indexes.pop(which, None)
                shutil.rmtree(path)
                return
            raise
        except OSError as exc:  # vanished or unreadable between the checks and the reads
            raise IndexCorruptError(
                f"Index at {path} cannot be read ({exc.strerror or exc}). "
                "Check its permissions, or rebuild it: `groundwork kb add --rebuild PATH...`."
            ) from exc

    # ------------------------------------------------------------------ models
    def embedder(self, which: Collection) -> Embedder:
        if which in self._embedders:
            return self._embedders[which]
        with self._lock:  # tools search from several threads; load each model once
            return self._load_embedder(which)

    def _load_embedder(self, which: Collection) -> Embedder:
        if which in self._embedders:
            return self._embedders[which]
        try:
            if which == "passages":
                emb: Embedder | None = text_embedder_from_settings(self.settings)
            else:
                emb = clip_embedder_from_settings(self.settings)
        except ModelUnavailable as exc:
            raise KnowledgeBaseUnavailable(str(exc)) from exc
        if emb is None:
            have = self.indexes.get("images")
            held = (
                f" This knowledge base holds {len(have)} images embedded with "
                f"{have.spec.name} (tag {have.spec.tag or 'none'}); configure that model."
                if have is not None
                else ""
            )
            raise KnowledgeBaseUnavailable(
                "Image search needs a CLIP model and none is configured: set "
                "retrieval.clip_model (GROUNDWORK_RETRIEVAL__CLIP_MODEL, e.g. ViT-B-32) and "
                f"retrieval.clip_pretrained.{held}"
            )
        index = self.indexes.get(which)
        if index is not None:
            check_compatible(index.path, index.spec, emb.spec)  # IndexMismatchError
        self._embedders[which] = emb
        return emb

    def index(self, which: Collection, *, create: bool = False) -> VectorIndex | None:
        idx = self.indexes.get(which)
        if idx is None and create:
            spec = self.embedder(which).spec
            idx = VectorIndex.create(self.root / which, spec, self.config)
            self.indexes[which] = idx
        return idx

    # ------------------------------------------------------------------ queries
    def _hits(self, which: Collection, query_vec: np.ndarray, top_k: int) -> list[KBHit]:
        idx = self.indexes.get(which)
        if idx is None or len(idx) == 0 or top_k <= 0:
            return []
        kind: Literal["image", "text"] = "image" if which == "images" else "text"
        out = []
        for id_, score in idx.search_one(query_vec, top_k):
            m = idx.meta.get(id_, {})
            out.append(
                KBHit(
                    id=id_,
                    score=score,
                    kind=kind,
                    path=m.get("path"),
                    url=m.get("url"),
                    caption=m.get("caption", ""),
                    text=m.get("text"),
                    source=m.get("source", ""),
                    sha256=m.get("sha256", ""),
                )
            )
        return out

    def search_passages(self, query: str, top_k: int = 5) -> list[KBHit]:
        if "passages" not in self.indexes:
            return []
        vec = self.embedder("passages").embed_texts([query])[0]
        return self._hits("passages", vec, top_k)

    def search_images(self, query: str, top_k: int = 5) -> list[KBHit]:
        emb = self.embedder("images")  # raises with the reason when CLIP is not configured
        if "images" not in self.indexes:
            return []
        return self._hits("images", emb.embed_texts([query])[0], top_k)

    def similar_images(self, image: Path | Image.Image, top_k: int = 5) -> list[KBHit]:
        from PIL import Image as PILImage

        emb = self.embedder("images")
        if "images" not in self.indexes:
            return []
        if isinstance(image, PILImage.Image):
            vec = emb.embed_images([image])[0]
        else:
            from core.images import ImageRejected, open_image_file

            cap = self.settings.max_image_pixels
            try:  # the guarded decoder: header checked against the cap before any pixel
                decoded = open_image_file(image, max_pixels=cap, max_side=1024)
            except ImageRejected as exc:
                raise ImageTooLarge(f"{exc} (retrieval.max_image_pixels)") from exc
            vec = emb.embed_images([decoded.image])[0]
        return self._hits("images", vec, top_k)

    # ------------------------------------------------------------------ writes
    @contextmanager
    def writing(self) -> Iterator[KnowledgeBase]:
        """One writer per folder (across processes): an flock on kb_dir/.lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh, self._lock:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise KnowledgeBaseUnavailable(
                    f"Another process is writing to the knowledge base at {self.root} "
                    f"(lock {self.root / '.lock'}); wait for it to finish."
                ) from exc
            try:
                self._refresh()
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Reload collections another process saved since we opened them (no lost updates)."""
        for which in ("passages", "images"):
            path = self.root / which
            if not VectorIndex.exists(path):
                continue
            loaded = self.indexes.get(which)
            on_disk = VectorIndex.read_manifest(path).version
            if loaded is None or (loaded.version != on_disk and not loaded.dirty):
                self._load(which, rebuild=False)
            elif loaded.version != on_disk:
                raise KnowledgeBaseUnavailable(
                    f"The {which} index at {path} was changed by another process while this "
                    "one held unsaved changes; run the command again."
                )

    def file_entries(self, which: Collection) -> dict[str, tuple[str, list[int]]]:
        """path -> (sha256, ids): what ingestion compares against to skip unchanged files."""
        out: dict[str, tuple[str, list[int]]] = {}
        idx = self.indexes.get(which)
        if idx is None:
            return out
        for id_, m in idx.meta.items():
            p = m.get("path")
            if p is None:
                continue
            sha, ids = out.setdefault(p, (m.get("sha256", ""), []))
            ids.append(id_)
        return out

    def upsert(
        self,
        which: Collection,
        ids: list[int],
        vectors: np.ndarray,
        metas: list[dict[str, Any]],
    ) -> None:
        with self._lock:
            idx = self.index(which, create=True)
            assert idx is not None
            idx.update(ids, vectors, metas)

    def delete(self, which: Collection, ids: list[int]) -> int:
        with self._lock:
            idx = self.indexes.get(which)
            return idx.delete(ids) if idx is not None else 0

    def remove_paths(self, paths: list[Path]) -> int:
        """Forget every entry that came from these files (or files under these folders)."""
        prefixes = [str(Path(p).resolve()) for p in paths]
        removed = 0
        for which in ("passages", "images"):
            entries = self.file_entries(which)
            doomed = [
                i
                for p, (_, ids) in entries.items()
                if any(p == pre or p.startswith(pre.rstrip("/") + "/") for pre in prefixes)
                for i in ids
            ]
            removed += self.delete(which, doomed)
        return removed

    def save(self) -> None:
        with self._lock:
            for idx in self.indexes.values():
                if idx.dirty:
                    idx.save()

    # ------------------------------------------------------------------ stats
    def stats(self) -> KBStats:
        cols = []
        for which, idx in self.indexes.items():
            try:
                live = VectorIndex.live_dir(idx.path) if VectorIndex.exists(idx.path) else None
                size = sum(p.stat().st_size for p in live.iterdir()) if live else 0
            except OSError as exc:  # removed since it was opened
                raise IndexCorruptError(
                    f"Index at {idx.path} vanished while reading it ({exc.strerror or exc})."
                ) from exc
            cols.append(
                CollectionStats(
                    name=which,
                    count=len(idx),
                    embedder=idx.spec.name,
                    tag=idx.spec.tag,
                    dim=idx.spec.dim,
                    kind=idx.kind,
                    files=len(self.file_entries(which)),
                    bytes_on_disk=size,
                )
            )
        return KBStats(
            kb_dir=str(self.root.resolve()),
            collections=cols,
            clip_configured=bool(self.settings.clip_model),
        )
