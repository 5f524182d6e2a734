"""Issue 22.7 (+22.1 for files): the Markdown chunker is linear and means what the old regex
meant; a symlink loop given directly is one skipped line, not a RuntimeError; image bombs of
every format are skipped with a reason. Inputs are generated per class."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.ingest import chunk_text, ingest, walk
from retrieval.kb import KnowledgeBase
from retrieval.settings import RetrievalSettings
from tests.support.hostile import BOMBS


def _reference_chunks(text: str, chunk_chars: int, overlap: int) -> list[tuple[str, str]]:
    """The regex chunker the linear one replaced (quadratic on long space runs, so only run on
    small inputs here): the oracle for what headings and paragraphs mean."""
    from retrieval.ingest import _windows

    heading, buf_heading = "", ""
    chunks: list[tuple[str, str]] = []
    buf: list[str] = []

    def flush() -> None:
        nonlocal buf
        if buf:
            chunks.append((buf_heading, "\n\n".join(buf).strip()))
            buf = []

    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = para.strip()
        if not para:
            continue
        m = re.match(r"^(#{1,6})\s+(.+?)\s*#*$", para.splitlines()[0])
        if m:
            flush()
            heading = m.group(2).strip()
            rest = "\n".join(para.splitlines()[1:]).strip()
            buf_heading = heading
            if not rest:
                continue
            para = rest
        if len(para) > chunk_chars:
            flush()
            buf_heading = heading
            chunks.extend((heading, piece) for piece in _windows(para, chunk_chars, overlap))
            continue
        if buf and sum([len(b) + 2 for b in buf]) + len(para) > chunk_chars:
            flush()
        if not buf:
            buf_heading = heading
        buf.append(para)
    flush()
    return [(h, c) for h, c in chunks if c]


PIECES = [
    "# ",
    "## ",
    "####### ",
    "#",
    "Title",
    " ##",
    "word",
    "more words.",
    "\n",
    "\n\n",
    "\n \n",
    "  ",
    "\t",
    "\r\n",
    "\f",
    "\u00a0",
    "\u2028",
    "x" * 40,
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=80), st.integers(40, 300))
def test_linear_chunker_means_what_the_regex_chunker_meant(pieces: list[str], size: int) -> None:
    text = "".join(pieces)
    assert chunk_text(text, size, size // 5) == _reference_chunks(text, size, size // 5)


HOSTILE_TEXTS: dict[str, Callable[[random.Random], str]] = {
    "spaces": lambda r: " " * r.randint(150_000, 250_000),
    "heading-spaces": lambda r: "#" * r.randint(1, 6) + " " * r.randint(150_000, 250_000) + "x",
    "heading-hashes": lambda r: "# " + "# " * r.randint(60_000, 100_000) + "x",
    "blank-line-storm": lambda r: " \n" * r.randint(60_000, 120_000),
    "tab-runs": lambda r: ("\t" * r.randint(1_000, 5_000) + "\n") * 40 + "end",
    "heading-per-line": lambda r: "".join(f"# h{i}\n\n" for i in range(r.randint(20_000, 40_000))),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", sorted(HOSTILE_TEXTS))
def test_pathological_markdown_chunks_in_one_pass(kind: str, seed: int) -> None:
    text = HOSTILE_TEXTS[kind](random.Random(seed))
    chunks = chunk_text(text, 800, 100)  # the old chunker took minutes on these
    assert all(len(c) <= 800 for _, c in chunks)


def _loop(tmp_path: Path, kind: str) -> Path:
    base = tmp_path / "links"
    base.mkdir()
    if kind == "self":
        (base / "a").symlink_to(base / "a")
    elif kind == "pair":
        (base / "a").symlink_to(base / "b")
        (base / "b").symlink_to(base / "a")
    elif kind == "triangle":
        (base / "a").symlink_to("b")
        (base / "b").symlink_to("c")
        (base / "c").symlink_to("a")
    else:  # through a folder link
        (base / "d").symlink_to(base / "a" / "x")
        (base / "a").symlink_to(base / "d")
    return base / "a"


@pytest.mark.parametrize("kind", ["self", "pair", "triangle", "folder"])
def test_a_symlink_loop_given_directly_is_one_skipped_line(
    kind: str, tmp_path: Path, make_settings: Callable[..., RetrievalSettings]
) -> None:
    loop = _loop(tmp_path, kind)
    (walked,) = walk([loop])
    assert walked.refused is not None
    kb = KnowledgeBase.open(make_settings(), create=True)
    report = ingest(kb, [loop])
    (skip,) = report.skipped
    assert skip.reason == "unreadable" and ("loop" in skip.detail or "no such" in skip.detail)


def test_links_out_of_a_folder_are_never_followed(
    tmp_path: Path, make_settings: Callable[..., RetrievalSettings]
) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\nthe password is hunter2\n")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "ok.md").write_text("# Ok\n\nharbour cranes are red.\n")
    (folder / "leak.md").symlink_to(secret)
    (folder / "sub").symlink_to(tmp_path)
    os.symlink(folder / "loop", folder / "loop")
    kb = KnowledgeBase.open(make_settings(), create=True)
    report = ingest(kb, [folder])
    assert report.documents_added == 1
    assert {s.reason for s in report.skipped} == {"symlink outside folder"}
    assert "hunter2" not in repr([idx.meta for idx in kb.indexes.values()])
    assert "harbour cranes" in repr([idx.meta for idx in kb.indexes.values()])


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_image_bombs_of_every_format_are_skipped_by_ingest(
    kind: str, tmp_path: Path, make_settings: Callable[..., RetrievalSettings]
) -> None:
    ext = {"webp-lossless": ".webp", "webp-animated": ".webp", "apng": ".png"}.get(kind, "")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = random.Random(3)
    for i in range(3):
        (folder / f"bomb{i}{ext or '.' + kind}").write_bytes(BOMBS[kind](rng))
    kb = KnowledgeBase.open(make_settings(), create=True)
    report = ingest(kb, [folder])
    assert report.images_added == 0
    assert [s.reason for s in report.skipped] == ["too many pixels"] * 3
