"""VectorIndex: add/delete/update by stable id, persistence, refusal of mismatches, crash safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from retrieval.embedders.base import EmbedderSpec
from retrieval.index import (
    IndexConfig,
    IndexCorruptError,
    IndexMismatchError,
    VectorIndex,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = EmbedderSpec(name="test:emb", tag="v1", dim=16)


def unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_search_delete_update_persist(
    tmp_path: Path, kind: Literal["flat", "ivf", "hnsw"]
) -> None:
    x = unit(2000)
    idx = VectorIndex.create(tmp_path / "i", SPEC, IndexConfig(kind=kind, nprobe=64))
    ids = np.arange(10_000, 12_000)
    idx.add(ids, x, [{"caption": f"c{i}"} for i in ids.tolist()])
    assert idx.kind == kind and len(idx) == 2000
    assert idx.search_one(x[3], 1)[0][0] == 10_003

    assert idx.delete([10_003, 10_004, 99]) == 2
    assert 10_003 not in idx and len(idx) == 1998
    assert all(i != 10_003 for i, _ in idx.search_one(x[3], 5))
    with pytest.raises(KeyError):
        idx.add([10_005], x[:1])

    idx.update([10_005], x[3:4])  # the id now carries another vector, metadata kept
    top = idx.search_one(x[3], 1)[0]
    assert top[0] == 10_005 and top[1] == pytest.approx(1.0, abs=1e-5)
    assert idx.meta[10_005] == {"caption": "c10005"}
    idx.add([10_003], x[3:4], [{"caption": "back"}])  # a deleted id can come back

    idx.save()
    again = VectorIndex.open(tmp_path / "i", expect=SPEC)
    assert again.kind == kind and len(again) == 1999
    assert {i for i, _ in again.search_one(x[3], 2)} == {10_003, 10_005}
    assert again.meta[10_003] == {"caption": "back"}
    np.testing.assert_allclose(again.vector(10_010), x[10], atol=1e-6)


def test_hnsw_tombstones_survive_reload_and_compact(tmp_path: Path) -> None:
    x = unit(300)
    idx = VectorIndex.create(tmp_path / "h", SPEC, IndexConfig(kind="hnsw"))
    idx.add(np.arange(300), x)
    idx.delete([1, 2])
    idx.save()
    again = VectorIndex.open(tmp_path / "h", expect=SPEC)
    assert len(again) == 298 and all(i not in (1, 2) for i, _ in again.search_one(x[1], 10))
    again.delete(list(range(3, 120)))  # > 25% tombstones: the graph is rebuilt
    assert again.faiss_index.ntotal == len(again) == 181


def test_auto_switches_to_ivf_above_threshold(tmp_path: Path) -> None:
    x = unit(3000)
    idx = VectorIndex.create(tmp_path / "a", SPEC, IndexConfig(kind="auto", approx_threshold=2000))
    idx.add(np.arange(1500), x[:1500])
    assert idx.kind == "flat"
    idx.add(np.arange(1500, 3000), x[1500:])
    assert idx.kind == "ivf" and len(idx) == 3000
    assert idx.manifest().params["nlist"] >= 16
    # recall@10 of the approximate index against exact search on the same vectors
    q = unit(50, seed=1)
    exact = (q @ x.T).argsort(axis=1)[:, ::-1][:, :10]
    _, got = idx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    assert recall > 0.9
    idx.delete(list(range(1200)))  # below the threshold, above half of it: stays IVF
    idx.add([5], x[5:6])
    assert idx.kind == "ivf" and len(idx) == 1801


def test_refuses_other_embedder(tmp_path: Path) -> None:
    idx = VectorIndex.create(tmp_path / "m", SPEC)
    idx.add([1, 2], unit(2))
    idx.save()
    for other in (
        EmbedderSpec(name="test:other", tag="v1", dim=16),
        EmbedderSpec(name="test:emb", tag="v2", dim=16),
        EmbedderSpec(name="test:emb", tag="v1", dim=32),
    ):
        with pytest.raises(IndexMismatchError, match="was built with test:emb"):
            VectorIndex.open(tmp_path / "m", expect=other)


def test_wrong_shapes_and_duplicates_are_errors(tmp_path: Path) -> None:
    idx = VectorIndex.create(tmp_path / "s", SPEC)
    with pytest.raises(ValueError, match="dim 16"):
        idx.add([1], np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        idx.add([1, 1], unit(2))
    assert idx.search(unit(1), 5)[1].shape == (1, 0)


def test_crash_during_save_keeps_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrieval.index as mod

    path = tmp_path / "c"
    idx = VectorIndex.create(path, SPEC)
    idx.add(np.arange(10), unit(10))
    idx.save()
    idx.add(np.arange(10, 20), unit(10, seed=2))

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mod, "_write_sidecar", boom)
    with pytest.raises(OSError, match="disk full"):
        idx.save()
    monkeypatch.undo()
    assert len(VectorIndex.open(path, expect=SPEC)) == 10  # the old version, intact
    idx.save()  # the next save cleans the half-written folder and succeeds
    assert len(VectorIndex.open(path, expect=SPEC)) == 20
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["v000002"]


@pytest.mark.parametrize("die_at", ["write_index", "replace_current"])
def test_process_killed_mid_save(tmp_path: Path, die_at: str) -> None:
    """A real process dies (os._exit, no cleanup) half-way through save(): no corrupt index."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        import retrieval.index as mod
        from retrieval.embedders.base import EmbedderSpec
        spec = EmbedderSpec(name="test:emb", tag="v1", dim=16)
        x = np.random.default_rng(0).normal(size=(50, 16)).astype("float32")
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        idx = mod.VectorIndex.create(r"{tmp_path / "k"}", spec)
        idx.add(np.arange(20), x[:20]); idx.save()
        idx.add(np.arange(20, 50), x[20:])
        faiss = mod._faiss()
        if "{die_at}" == "write_index":
            real = faiss.write_index
            def dying(index, path):
                real(index, path)
                with open(path, "r+b") as fh:
                    fh.truncate(100)
                os._exit(3)
            faiss.write_index = dying
        else:
            real_replace = os.replace
            def dying_replace(src, dst):
                if str(dst).endswith("CURRENT"):
                    os._exit(3)
                real_replace(src, dst)
            mod.os.replace = dying_replace
        idx.save()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    again = VectorIndex.open(tmp_path / "k", expect=SPEC)
    assert len(again) == 20
    again.add([99], unit(1))
    again.save()
    assert len(VectorIndex.open(tmp_path / "k", expect=SPEC)) == 21


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    idx = VectorIndex.create(tmp_path / "t", SPEC)
    idx.add([1], unit(1))
    live = idx.save()
    with open(live / "index.faiss", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(IndexCorruptError, match="wrong size"):
        VectorIndex.open(tmp_path / "t", expect=SPEC)
