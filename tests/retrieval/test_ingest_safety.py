"""`kb add` reads only what it was given, within limits, before decoding anything.

- symlinks: a link (file, folder or caption sidecar) that resolves outside the folder given is
  skipped and reported; links that stay inside are fine; a link the user names is read;
- pixels: the cap is checked from the header, before any pixel is decoded, for every format;
- sizes: documents and caption sidecars have caps, reported as skips;
- special files (FIFOs, devices) never block the walk;
- escape sequences and control characters never reach the index.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from retrieval.ingest import IngestReport, ingest
from retrieval.kb import KnowledgeBase
from retrieval.settings import RetrievalSettings

Settings = Callable[..., RetrievalSettings]
SECRET = "PRIVATE-TOKEN-7f3a"


def reasons(report: IngestReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in report.skipped:
        out.setdefault(s.reason, []).append(Path(s.path).name)
    return out


def indexed_text(kb: KnowledgeBase) -> str:
    return repr([idx.meta for idx in kb.indexes.values()])


@pytest.fixture()
def outside(tmp_path: Path, png: Callable[..., Path]) -> Path:
    """Private material next to, not inside, the folder being ingested."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.md").write_text(f"The launch code is {SECRET}.", encoding="utf-8")
    (out / "notes").mkdir()
    (out / "notes" / "more.md").write_text(f"Also {SECRET} here.", encoding="utf-8")
    png(out / "private.png", (10, 20, 30))
    return out


def test_links_out_of_the_folder_are_not_followed(
    make_settings: Settings, tmp_path: Path, outside: Path, png: Callable[..., Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "otters.md").write_text("Sea otters hold hands while sleeping.", encoding="utf-8")
    (data / "sub").mkdir()
    (data / "sub" / "alias.md").symlink_to(data / "otters.md")  # inside: fine, counted once
    (data / "stolen.md").symlink_to(outside / "secret.md")  # file link out
    (data / "relative.md").symlink_to(Path("..") / "outside" / "secret.md")
    (data / "notes").symlink_to(outside / "notes", target_is_directory=True)  # folder link out
    (data / "loop").symlink_to(data, target_is_directory=True)  # a loop: must not recurse
    (data / "picture.png").symlink_to(outside / "private.png")  # image link out
    png(data / "heron.png", (200, 200, 200))
    (data / "heron.txt").symlink_to(outside / "secret.md")  # caption sidecar link out
    (data / "dangling.md").symlink_to(tmp_path / "nowhere.md")

    kb = KnowledgeBase.open(make_settings(), create=True)
    report = ingest(kb, [data])
    why = reasons(report)
    assert sorted(why["symlink outside folder"]) == [
        "dangling.md",
        "heron.txt",
        "notes",
        "picture.png",
        "relative.md",
        "stolen.md",
    ]
    assert SECRET not in indexed_text(kb)
    assert report.documents_added == 1 and report.images_added == 1
    heron = next(iter(kb.indexes["images"].meta.values()))
    assert heron["caption"] == "heron"  # from the name, not from the refused sidecar

    # a file the user names is read even when it is a link: they chose it
    report = ingest(kb, [data / "stolen.md"])
    assert report.documents_added == 1 and SECRET in indexed_text(kb)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_pixel_cap_is_applied_before_decoding(
    make_settings: Settings, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    ext = {"JPEG": "jpg", "TIFF": "tif"}.get(fmt, fmt.lower())
    Image.new("RGB", (300, 200), (90, 30, 200)).save(folder / f"wide.{ext}", fmt)
    (folder / "bomb.png").write_bytes(_png_declaring(60_000, 60_000))  # 3.6 G pixels
    (folder / "medium.png").write_bytes(_png_declaring(5_000, 4_000))  # under Pillow's own cap
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    kb = KnowledgeBase.open(make_settings(max_image_pixels=50_000), create=True)
    report = ingest(kb, [folder])
    assert sorted(reasons(report)["too many pixels"]) == ["bomb.png", "medium.png", f"wide.{ext}"]
    assert decoded == []  # not one of them was decoded
    assert any("60000x60000" in s.detail or "Pillow" in s.detail for s in report.skipped)


def test_query_image_over_the_cap_is_refused_undecoded(
    make_settings: Settings, tmp_path: Path, png: Callable[..., Path]
) -> None:
    from retrieval.api import ImageTooLarge

    kb = KnowledgeBase.open(make_settings(), create=True)
    ingest(kb, [png(tmp_path / "in" / "a.png", (1, 2, 3))])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(9_000, 9_000))
    with pytest.raises(ImageTooLarge, match="max_image_pixels"):
        kb.similar_images(bomb)


def test_documents_and_caption_sidecars_have_size_caps(
    make_settings: Settings, tmp_path: Path, png: Callable[..., Path]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "small.md").write_text("Herons stand still for minutes.", encoding="utf-8")
    (folder / "huge.md").write_text("word " * 30_000, encoding="utf-8")  # 150 KB
    png(folder / "kite.png", (240, 20, 20))
    (folder / "kite.txt").write_text("a red kite " * 2_000, encoding="utf-8")  # 22 KB
    png(folder / "lark.png", (20, 240, 20))
    (folder / "lark.json").write_text('{"caption": "' + "x" * 20_000 + '"}', encoding="utf-8")
    settings = make_settings(max_document_mb=0.1, max_caption_bytes=4_096)
    kb = KnowledgeBase.open(settings, create=True)
    report = ingest(kb, [folder])
    why = reasons(report)
    assert sorted(why["too large"]) == ["huge.md", "kite.txt", "lark.json"]
    details = {Path(s.path).name: s.detail for s in report.skipped}
    assert "max_document_mb" in details["huge.md"] and "caption" in details["kite.txt"]
    captions = sorted(m["caption"] for m in kb.indexes["images"].meta.values())
    assert captions == ["kite", "lark"]  # the images themselves are kept
    assert report.documents_added == 1 and report.images_added == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_do_not_block(make_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "pipe.md")  # opening it for reading would block forever
    (folder / "zero.md").symlink_to("/dev/zero")  # would never end
    (folder / "ok.md").write_text("Kingfishers dive for fish.", encoding="utf-8")
    kb = KnowledgeBase.open(make_settings(clip_model=None), create=True)
    report = ingest(kb, [folder, folder / "pipe.md"])  # named explicitly too
    assert report.documents_added == 1
    why = reasons(report)
    assert "zero.md" in why["symlink outside folder"] and "pipe.md" in why["unreadable"]


def test_escape_sequences_never_reach_the_index(make_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "esc"
    folder.mkdir()
    (folder / "doc.md").write_text(
        "# Title\x1b[2J\n\nThe \x1b[31mred\x1b[0m kite\x07 \x1b]0;pwned\x07soars \x9b31m"
        "\u202eover\u202c the hills.\r\n",
        encoding="utf-8",
    )
    kb = KnowledgeBase.open(make_settings(clip_model=None), create=True)
    ingest(kb, [folder])
    rows = list(kb.indexes["passages"].meta.values())
    assert [r["text"] for r in rows] == ["The red kite soars over the hills."]
    assert rows[0]["caption"] == "Title"
