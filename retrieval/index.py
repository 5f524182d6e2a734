"""faiss vector index keyed by stable ids, with a metadata sidecar and a manifest.

On disk an index is a folder:

    CURRENT              name of the live version folder (replaced atomically)
    v000007/index.faiss  faiss.write_index output
    v000007/sidecar.jsonl  one JSON object per entry (id -> path/url, caption, source, sha256, ...)
    v000007/manifest.json  embedder name/tag/dim, metric, kind, count, file sizes and sha256
    v000007/tombstones.npy (HNSW only) ids deleted but still in the graph

A save writes a new version folder, fsyncs it, then swaps CURRENT with `os.replace`: a crash at
any point leaves the previous version intact and loadable (leftover temp folders are removed
on the next save). Only the newest version is kept.

Kinds: `flat` (exact, `IndexIDMap2(IndexFlatIP)`), `ivf` (`IndexIVFFlat`, trained on a sample,
native ids, hashtable direct map so ids can be reconstructed and removed), `hnsw`
(`IndexIDMap2(IndexHNSWFlat)`; faiss cannot remove from HNSW, so deletes are tombstones
filtered at search time and compacted away when they pile up or an id is re-added).

Opening verifies before it trusts: CURRENT must name a version folder, every file the manifest
lists must have its size and sha256, the faiss object must be the kind, dimension and count the
manifest says, and the sidecar must be rows of the ids in the index. Anything else raises
`IndexCorruptError` (one line: what is wrong, where, how to rebuild), never a faiss or numpy
error and never silently ranked garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from retrieval.embedders.base import EmbedderSpec
from retrieval.types import IndexCorruptError, IndexMismatchError, VectorIndexError

__all__ = [
    "FORMAT_VERSION",
    "IndexConfig",
    "IndexCorruptError",
    "IndexMismatchError",
    "Manifest",
    "VectorIndex",
    "VectorIndexError",
    "check_compatible",
]

IndexKind = Literal["flat", "ivf", "hnsw"]
# 2: the manifest carries a sha256 per file. Format 1 had sizes only, so a flipped byte in the
# vectors was ranked instead of refused; such an index must be rebuilt.
FORMAT_VERSION = 2
IVF_MIN_VECTORS = 1_000  # below this an explicit "ivf" index stays exact: too little to train on
DATA_FILES = ("index.faiss", "sidecar.jsonl", "tombstones.npy")
REQUIRED_FILES = ("index.faiss", "sidecar.jsonl")
_VERSION_NAME = re.compile(r"v\d{6}")
_OPEN_ATTEMPTS = 3  # a writer may swap versions while we read: retry when CURRENT moved


def rebuild_hint(path: Path) -> str:
    """The fix every corruption message ends with (the index cannot be repaired in place)."""
    return (
        f"Rebuild it: `groundwork kb add --rebuild PATH...` (re-ingests your files), or delete "
        f"{path} and ingest again."
    )


def _one_line(text: object) -> str:
    """faiss errors span lines ("Error in ... at file:line: ..."); messages stay one line."""
    return " ".join(str(text).split())[:300]


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class IndexConfig(BaseModel):
    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        default="auto", description="auto = flat below approx_threshold vectors, then IVF."
    )
    approx_threshold: int = Field(default=100_000, ge=1)
    nlist: int | None = Field(default=None, description="IVF lists; None = ~sqrt(n).")
    nprobe: int = Field(default=32, ge=1)
    train_points_per_list: int = Field(
        default=40, ge=1, description="Training sample = nlist x this (capped by n)."
    )
    retrain_growth: float = Field(
        default=8.0, gt=1, description="Retrain IVF when the index grew this much since training."
    )
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=80, ge=8)
    hnsw_ef_search: int = Field(default=64, ge=8)
    hnsw_compact_ratio: float = Field(
        default=0.25, gt=0, le=1, description="Compact HNSW when tombstones exceed this share."
    )


class Manifest(BaseModel):
    format: int = FORMAT_VERSION
    embedder: EmbedderSpec
    kind: IndexKind
    count: int
    params: dict[str, Any] = Field(default_factory=dict)
    trained_at_count: int = 0
    version: int = 0
    updated_at: float = 0.0
    files: dict[str, int] = Field(default_factory=dict, description="file name -> size in bytes")
    checksums: dict[str, str] = Field(
        default_factory=dict, description="file name -> sha256 (hex) of its bytes"
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; rename is still atomic
        pass
    finally:
        os.close(fd)


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False).reshape(-1)


def _faiss() -> Any:
    """faiss, untyped on purpose: its partial stubs disagree with the SWIG objects at run time."""
    import faiss

    return faiss


def default_nlist(n: int) -> int:
    return int(min(65_536, max(16, round(math.sqrt(max(n, 1))))))


class VectorIndex:
    """One faiss index + its metadata. Not thread-safe; the knowledge base serializes writers."""

    def __init__(self, path: Path, spec: EmbedderSpec, config: IndexConfig | None = None) -> None:
        self.path = Path(path)
        self.spec = spec
        self.config = config or IndexConfig()
        self.meta: dict[int, dict[str, Any]] = {}
        self._ids: set[int] = set()
        self._tombstones: set[int] = set()
        self._trained_at = 0
        self._version = 0
        self._dirty = False
        self.kind: IndexKind = "hnsw" if self.config.kind == "hnsw" else "flat"
        self._index: Any = self._new_index(self.kind, 0)

    # ---------------------------------------------------------------- construction
    def _new_index(self, kind: IndexKind, n: int, train: np.ndarray | None = None) -> Any:
        faiss = _faiss()

        d = self.spec.dim
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.config.hnsw_ef_construction
            inner.hnsw.efSearch = self.config.hnsw_ef_search
            return faiss.IndexIDMap2(inner)
        nlist = self.config.nlist or default_nlist(n)
        if train is None or len(train) < nlist:
            raise ValueError(f"IVF with {nlist} lists needs at least {nlist} training vectors")
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 20
        ivf.cp.max_points_per_centroid = max(self.config.train_points_per_list, 1)
        ivf.train(np.ascontiguousarray(train, dtype=np.float32))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = min(self.config.nprobe, nlist)
        return ivf

    @classmethod
    def create(
        cls, path: Path, spec: EmbedderSpec, config: IndexConfig | None = None
    ) -> VectorIndex:
        return cls(path, spec, config)

    # ---------------------------------------------------------------- size and access
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._ids

    def ids(self) -> Iterator[int]:
        return iter(self._ids)

    @property
    def faiss_index(self) -> Any:
        return self._index

    def _check_vectors(self, vectors: np.ndarray, n: int | None = None) -> np.ndarray:
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim == 1:
            vecs = vecs.reshape(1, -1)
        if vecs.ndim != 2 or vecs.shape[1] != self.spec.dim:
            raise ValueError(
                f"vectors of shape {vectors.shape} do not fit this index "
                f"({self.spec.name}, dim {self.spec.dim})"
            )
        if n is not None and len(vecs) != n:
            raise ValueError(f"{len(vecs)} vectors for {n} ids")
        return vecs

    # ---------------------------------------------------------------- writes
    def add(
        self,
        ids: Iterable[int] | np.ndarray,
        vectors: np.ndarray,
        metas: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Vectors must be L2-normalized (inner product = cosine); ids must be new."""
        id_arr = _as_ids(ids)
        vecs = self._check_vectors(vectors, len(id_arr))
        if metas is not None and len(metas) != len(id_arr):
            raise ValueError(f"{len(metas)} metadata rows for {len(id_arr)} ids")
        if len(id_arr) == 0:
            return
        id_list = id_arr.tolist()
        if len(set(id_list)) != len(id_list):
            raise ValueError("duplicate ids in one add() call")
        if not self._ids.isdisjoint(id_list):
            dup = sorted(self._ids.intersection(id_list))[:5]
            raise KeyError(f"ids already in the index (use update()): {dup}")
        if self.kind == "hnsw" and not self._tombstones.isdisjoint(id_list):
            self.compact()
        self._grow_kind(len(self._ids) + len(id_list), vecs)
        self._index.add_with_ids(vecs, id_arr)
        self._ids.update(id_list)
        if metas is not None:
            for i, m in zip(id_list, metas, strict=True):
                self.meta[i] = dict(m)
        self._dirty = True
        self._maybe_retrain()

    def delete(self, ids: Iterable[int] | np.ndarray) -> int:
        """Returns how many of `ids` were present (unknown ids are ignored)."""
        faiss = _faiss()

        present = [i for i in _as_ids(ids).tolist() if i in self._ids]
        if not present:
            return 0
        arr = np.asarray(present, dtype=np.int64)
        if self.kind == "flat":
            self._index.remove_ids(arr)
        elif self.kind == "ivf":
            self._index.remove_ids(faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr)))
        else:
            self._tombstones.update(present)
        self._ids.difference_update(present)
        for i in present:
            self.meta.pop(i, None)
        self._dirty = True
        if self.kind == "hnsw" and len(self._tombstones) > self.config.hnsw_compact_ratio * max(
            1, self._index.ntotal
        ):
            self.compact()
        return len(present)

    def update(
        self,
        ids: Iterable[int] | np.ndarray,
        vectors: np.ndarray,
        metas: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Replace (or insert) entries under the same stable ids."""
        id_arr = _as_ids(ids)
        vecs = self._check_vectors(vectors, len(id_arr))
        old_meta = {i: self.meta.get(i) for i in id_arr.tolist()}
        self.delete(id_arr)
        if metas is None:
            metas_kept = [old_meta[i] or {} for i in id_arr.tolist()]
            self.add(id_arr, vecs, metas_kept if any(old_meta.values()) else None)
        else:
            self.add(id_arr, vecs, metas)

    # ---------------------------------------------------------------- kind changes
    def _desired_kind(self, n: int) -> IndexKind:
        k = self.config.kind
        if k == "hnsw":
            return "hnsw"
        threshold = self.config.approx_threshold
        if self.kind == "ivf" and k == "auto":
            threshold //= 2  # hysteresis: deletes around the threshold do not flip-flop kinds
        if k == "flat" or (k == "auto" and n < threshold):
            return "flat"
        return "ivf" if n >= IVF_MIN_VECTORS else "flat"

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of live entries, from the index itself (no copy kept elsewhere)."""
        faiss = _faiss()

        if self.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            flat = faiss.downcast_index(self._index.index)
            vecs = faiss.vector_to_array(flat.codes).view(np.float32).reshape(-1, self.spec.dim)
            return ids, vecs
        ids = np.fromiter(self._ids, dtype=np.int64, count=len(self._ids))
        if len(ids) == 0:
            return ids, np.zeros((0, self.spec.dim), dtype=np.float32)
        return ids, np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def _rebuild(self, kind: IndexKind, extra: np.ndarray | None = None) -> None:
        ids, vecs = self._all_vectors()
        n = len(ids) + (0 if extra is None else len(extra))
        train = None
        if kind == "ivf":
            train = self._training_sample(vecs, extra, n)
        new = self._new_index(kind, n, train)
        if len(ids):
            new.add_with_ids(np.ascontiguousarray(vecs), ids)
        self._index = new
        self.kind = kind
        self._tombstones.clear()
        if kind == "ivf":
            self._trained_at = n
        self._dirty = True

    def _training_sample(self, vecs: np.ndarray, extra: np.ndarray | None, n: int) -> np.ndarray:
        nlist = self.config.nlist or default_nlist(n)
        want = min(n, nlist * self.config.train_points_per_list)
        pool = vecs if extra is None else (extra if len(vecs) == 0 else np.vstack([vecs, extra]))
        if len(pool) <= want:
            return pool
        rng = np.random.default_rng(0)
        return pool[np.sort(rng.choice(len(pool), size=want, replace=False))]

    def _grow_kind(self, n_after: int, incoming: np.ndarray) -> None:
        want = self._desired_kind(n_after)
        if want != self.kind:
            self._rebuild(want, extra=incoming)

    def _maybe_retrain(self) -> None:
        if self.kind == "ivf" and len(self._ids) > self.config.retrain_growth * max(
            1, self._trained_at
        ):
            self._rebuild("ivf")

    def compact(self) -> None:
        """Drop HNSW tombstones by rebuilding the graph from the live vectors."""
        if self.kind == "hnsw" and self._tombstones:
            self._rebuild("hnsw")

    def rebuild(self, kind: IndexKind | None = None) -> None:
        """Re-create the index (e.g. retrain IVF after heavy growth, or switch kind)."""
        self._rebuild(kind or self._desired_kind(len(self)))

    # ---------------------------------------------------------------- search
    def _search_params(self) -> tuple[Any, ...] | None:
        """(params, *objects the params point to): SWIG does not keep those alive for us."""
        faiss = _faiss()

        if self.kind == "hnsw" and self._tombstones:
            arr = np.fromiter(self._tombstones, dtype=np.int64)
            batch = faiss.IDSelectorBatch(arr)
            sel = faiss.IDSelectorNot(batch)
            params = faiss.SearchParametersHNSW(efSearch=self.config.hnsw_ef_search, sel=sel)
            return (params, sel, batch, arr)
        return None

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'); k' = min(k, len); missing slots have id -1."""
        q = self._check_vectors(queries)
        k_eff = min(k, len(self))
        if k_eff <= 0:
            return (np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
        params = self._search_params()
        if params is None:
            scores, ids = self._index.search(q, k_eff)
        else:
            scores, ids = self._index.search(q, k_eff, params=params[0])
        return scores, ids

    def search_one(self, query: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        scores, ids = self.search(query.reshape(1, -1), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def vector(self, id_: int) -> np.ndarray:
        if id_ not in self._ids:
            raise KeyError(id_)
        return np.asarray(self._index.reconstruct(int(id_)), dtype=np.float32)

    # ---------------------------------------------------------------- persistence
    def manifest(self) -> Manifest:
        params: dict[str, Any] = {}
        if self.kind == "ivf":
            params = {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe)}
        elif self.kind == "hnsw":
            params = {"m": self.config.hnsw_m, "ef_search": self.config.hnsw_ef_search}
        return Manifest(
            embedder=self.spec,
            kind=self.kind,
            count=len(self),
            params=params,
            trained_at_count=self._trained_at,
            version=self._version,
            updated_at=time.time(),
        )

    @property
    def version(self) -> int:
        """Save generation of what is in memory (the manifest's `version` on disk)."""
        return self._version

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> Path:
        """Atomic: write a new version folder, fsync, then swap CURRENT."""
        faiss = _faiss()

        self.path.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        version = self._version + 1
        final = self.path / f"v{version:06d}"
        tmp = self.path / f"v{version:06d}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files: dict[str, int] = {}
        checksums: dict[str, str] = {}
        faiss.write_index(self._index, str(tmp / "index.faiss"))
        _write_sidecar(tmp / "sidecar.jsonl", self.meta)
        if self._tombstones:
            np.save(tmp / "tombstones.npy", np.fromiter(self._tombstones, dtype=np.int64))
        for name in DATA_FILES:
            p = tmp / name
            if p.exists():
                _fsync_file(p)
                files[name] = p.stat().st_size
                checksums[name] = sha256_of(p)
        self._version = version
        manifest = self.manifest()
        manifest.files = files
        manifest.checksums = checksums
        mpath = tmp / "manifest.json"
        mpath.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        _fsync_file(mpath)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.path)
        cur_tmp = self.path / f"CURRENT.tmp-{os.getpid()}"
        cur_tmp.write_text(final.name, encoding="utf-8")
        _fsync_file(cur_tmp)
        os.replace(cur_tmp, self.path / "CURRENT")
        _fsync_dir(self.path)
        self._dirty = False
        self._clean_old(keep=final.name)
        return final

    def _clean_stale(self) -> None:
        for p in self.path.iterdir():
            if ".tmp-" in p.name:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _clean_old(self, keep: str) -> None:
        for p in self.path.iterdir():
            if p.is_dir() and p.name.startswith("v") and p.name != keep and ".tmp-" not in p.name:
                shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / "CURRENT").is_file()

    @staticmethod
    def live_dir(path: Path) -> Path:
        """The version folder CURRENT names; checked, so an edited CURRENT cannot point outside."""
        path = Path(path)
        cur = path / "CURRENT"
        if not cur.is_file():
            raise FileNotFoundError(f"No index at {path} (no CURRENT file).")
        try:
            name = cur.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise IndexCorruptError(
                f"Index at {path}: CURRENT cannot be read ({_one_line(exc)}). {rebuild_hint(path)}"
            ) from exc
        if not _VERSION_NAME.fullmatch(name):
            raise IndexCorruptError(
                f"Index at {path}: CURRENT holds {name[:40]!r}, not a version folder name like "
                f"v000001. {rebuild_hint(path)}"
            )
        live = path / name
        if not live.is_dir():
            raise IndexCorruptError(
                f"Index at {path}: CURRENT points to {name}, which does not exist. "
                f"{rebuild_hint(path)}"
            )
        return live

    @staticmethod
    def read_manifest(path: Path) -> Manifest:
        path = Path(path)
        live = VectorIndex.live_dir(path)
        mpath = live / "manifest.json"
        if not mpath.is_file():
            raise IndexCorruptError(
                f"Index at {path}: CURRENT points to {live.name}, which has no manifest.json. "
                f"{rebuild_hint(path)}"
            )
        try:
            raw = mpath.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IndexCorruptError(
                f"Index at {path}: {mpath.name} cannot be read ({_one_line(exc)}). "
                f"{rebuild_hint(path)}"
            ) from exc
        try:
            fmt = json.loads(raw).get("format")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise IndexCorruptError(
                f"Index at {path}: {mpath} is not a JSON object. {rebuild_hint(path)}"
            ) from exc
        if fmt != FORMAT_VERSION:
            why = (
                "has no checksums (written by an older Groundwork)"
                if isinstance(fmt, int) and fmt < FORMAT_VERSION
                else f"has format {fmt!r}; this version reads {FORMAT_VERSION}"
            )
            raise IndexCorruptError(f"Index at {path} {why}. {rebuild_hint(path)}")
        try:
            return Manifest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(root)"
            raise IndexCorruptError(
                f"Index at {path}: {mpath.name} is invalid at {where} ({first['msg']}). "
                f"{rebuild_hint(path)}"
            ) from exc

    @classmethod
    def open(
        cls,
        path: Path,
        expect: EmbedderSpec | None = None,
        config: IndexConfig | None = None,
    ) -> VectorIndex:
        """Load and verify the live version; refuses one built by another embedder than
        `expect` (IndexMismatchError) and any file that is not what the manifest says
        (IndexCorruptError). Never raises a faiss/numpy error."""
        path = Path(path)
        for attempt in range(_OPEN_ATTEMPTS):
            before = _current_name(path)
            try:
                return cls._open_once(path, expect, config)
            except IndexCorruptError:
                # A writer in another process swapped CURRENT and removed the folder we were
                # reading: that is not corruption, read the new version.
                if attempt + 1 < _OPEN_ATTEMPTS and _current_name(path) != before:
                    continue
                raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_once(
        cls, path: Path, expect: EmbedderSpec | None, config: IndexConfig | None
    ) -> VectorIndex:
        manifest = cls.read_manifest(path)
        if expect is not None:
            check_compatible(path, manifest.embedder, expect)
        live = cls.live_dir(path)
        _verify_files(path, live, manifest)
        try:
            return cls._load_verified(path, live, manifest, config)
        except VectorIndexError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            # The checksums matched, so the files are what was written; a failure here means
            # the manifest and the files were replaced together by something else.
            raise IndexCorruptError(
                f"Index at {path}: {live.name} cannot be loaded ({type(exc).__name__}: "
                f"{_one_line(exc)}). {rebuild_hint(path)}"
            ) from exc

    @classmethod
    def _load_verified(
        cls, path: Path, live: Path, manifest: Manifest, config: IndexConfig | None
    ) -> VectorIndex:
        faiss = _faiss()

        idx = cls(path, manifest.embedder, config)
        idx._index = faiss.read_index(str(live / "index.faiss"))
        idx.kind = manifest.kind
        idx._trained_at = manifest.trained_at_count
        idx._version = manifest.version
        _check_structure(path, idx._index, manifest)
        idx.meta = _read_sidecar(live / "sidecar.jsonl")
        tomb = live / "tombstones.npy"
        if tomb.is_file():
            arr = np.load(tomb, allow_pickle=False)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise IndexCorruptError(
                    f"Index at {path}: {tomb.name} is not a list of ids. {rebuild_hint(path)}"
                )
            idx._tombstones = set(arr.tolist())
        if idx.kind == "flat":
            idx._ids = set(faiss.vector_to_array(idx._index.id_map).tolist())
        elif idx.kind == "hnsw":
            idx._ids = set(faiss.vector_to_array(idx._index.id_map).tolist()) - idx._tombstones
        else:
            idx._ids = _ivf_ids(idx._index)
        if len(idx._ids) != manifest.count:
            raise IndexCorruptError(
                f"Index at {path} holds {len(idx._ids)} vectors but its manifest says "
                f"{manifest.count}. {rebuild_hint(path)}"
            )
        stray = idx.meta.keys() - idx._ids
        if stray:
            raise IndexCorruptError(
                f"Index at {path}: sidecar.jsonl describes {len(stray)} ids that are not in "
                f"the index (e.g. {min(stray)}). {rebuild_hint(path)}"
            )
        if idx.kind == "ivf" and config is not None:
            idx._index.nprobe = min(config.nprobe, idx._index.nlist)
        if idx.kind == "hnsw" and config is not None:
            faiss.downcast_index(idx._index.index).hnsw.efSearch = config.hnsw_ef_search
        return idx


def _current_name(path: Path) -> str | None:
    try:
        return (path / "CURRENT").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _verify_files(path: Path, live: Path, manifest: Manifest) -> None:
    """Sizes first (cheap, catches truncation), then sha256 (catches altered bytes)."""
    unknown = set(manifest.files) - set(DATA_FILES)
    missing = [n for n in REQUIRED_FILES if n not in manifest.files]
    unchecked = [n for n in manifest.files if n not in manifest.checksums]
    if unknown or missing or unchecked:
        what = (
            f"lists unknown files {sorted(unknown)}"
            if unknown
            else f"does not list {missing}"
            if missing
            else f"has no checksum for {unchecked}"
        )
        raise IndexCorruptError(f"Index at {path}: the manifest {what}. {rebuild_hint(path)}")
    for name, size in manifest.files.items():
        p = live / name
        if not p.is_file() or p.stat().st_size != size:
            raise IndexCorruptError(
                f"Index at {path}: {p} is missing or has the wrong size "
                f"(manifest says {size} bytes). {rebuild_hint(path)}"
            )
    for name, want in manifest.checksums.items():
        if name not in manifest.files:
            continue
        try:
            got = sha256_of(live / name)
        except OSError as exc:
            raise IndexCorruptError(
                f"Index at {path}: {live / name} cannot be read ({_one_line(exc)}). "
                f"{rebuild_hint(path)}"
            ) from exc
        if got != want:
            raise IndexCorruptError(
                f"Index at {path}: {live / name} fails its checksum (sha256 {got[:12]}..., "
                f"manifest says {want[:12]}...): the file was altered or damaged. "
                f"{rebuild_hint(path)}"
            )


def _check_structure(path: Path, index: Any, manifest: Manifest) -> None:
    """The faiss object must be the kind and dimension the manifest says, or the id and vector
    accessors below would fail with SWIG errors (or read the wrong memory layout)."""
    faiss = _faiss()

    if index.d != manifest.embedder.dim:
        raise IndexCorruptError(
            f"Index at {path}: faiss dimension {index.d} != manifest "
            f"{manifest.embedder.dim}. {rebuild_hint(path)}"
        )
    if manifest.kind == "ivf":
        ok = isinstance(index, faiss.IndexIVFFlat)
    else:
        inner_type = faiss.IndexFlat if manifest.kind == "flat" else faiss.IndexHNSWFlat
        ok = isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), inner_type
        )
    if not ok or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexCorruptError(
            f"Index at {path}: the faiss file holds a {type(index).__name__}, not the "
            f"inner-product {manifest.kind} index the manifest says. {rebuild_hint(path)}"
        )


def check_compatible(path: Path, have: EmbedderSpec, want: EmbedderSpec) -> None:
    if (have.name, have.tag, have.dim, have.metric) != (want.name, want.tag, want.dim, want.metric):
        raise IndexMismatchError(
            f"The index at {path} was built with {have.name} (tag {have.tag or 'none'}, "
            f"dim {have.dim}) but the configured embedder is {want.name} (tag "
            f"{want.tag or 'none'}, dim {want.dim}). Vectors from different models are not "
            "comparable. Fix: configure the original model again, point retrieval.kb_dir at a "
            "new folder, or rebuild with `groundwork kb add --rebuild PATH...`."
        )


def _ivf_ids(ivf: Any) -> set[int]:
    faiss = _faiss()

    invlists = faiss.extract_index_ivf(ivf).invlists
    out: set[int] = set()
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            out.update(faiss.rev_swig_ptr(ptr, size).tolist())
    return out


def _write_sidecar(path: Path, meta: Mapping[int, Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, row in meta.items():
            fh.write(json.dumps({"id": i, **row}, ensure_ascii=False))
            fh.write("\n")


def _read_sidecar(path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IndexCorruptError(
                    f"{path}:{line_no}: bad JSON ({exc}). {rebuild_hint(path.parent.parent)}"
                ) from exc
            id_ = row.pop("id", None) if isinstance(row, dict) else None
            if not isinstance(id_, int) or isinstance(id_, bool):
                raise IndexCorruptError(
                    f"{path}:{line_no}: not an object with an integer id. "
                    f"{rebuild_hint(path.parent.parent)}"
                )
            out[id_] = row
    return out
