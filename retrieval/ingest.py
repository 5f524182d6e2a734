"""Ingestion: walk paths, embed images (CLIP) and text documents (chunked), skip what is
unchanged or unusable and say why.

Images: .jpg .jpeg .png .webp .gif .bmp .tif .tiff. Caption from a sidecar next to the image
(`photo.txt`, `photo.jpg.txt`, or `photo.json` / `photo.jpg.json` with a "caption",
"description" or "title" key), else from the file name ("red_sneaker-v2.jpg" -> "red sneaker v2").
Text documents: .md .markdown .txt .text .rst (UTF-8), split into passages of about
`chunk_chars` characters on paragraph boundaries, each carrying its nearest Markdown heading.
PDFs and other binary documents are not parsed (skipped with that reason).

What is given is what is read. Under a folder, a symlink is followed only when its target lies
inside that folder (a link into the rest of the disk is skipped as "symlink outside folder";
a caption sidecar that is such a link is ignored and reported the same way); links to folders
are never descended (what they point to inside the folder is walked anyway, and loops are
impossible). A file named on the command line is read even if it is a link: the user chose it.
Files are opened without following a last-moment link swap (O_NOFOLLOW on the resolved path)
and must be regular files (no FIFOs or devices that would block or never end).

Caps, all reported as skips with the reason: any file over `max_file_mb`; documents over
`max_document_mb`; caption sidecars over `max_caption_bytes` (the caption then comes from the
file name); images declaring more than `max_image_pixels` in their header are refused before
a single pixel is decoded (decompression bombs cost nothing). Passages and captions are
stripped of terminal escape sequences and control characters (`retrieval.text.clean_text`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from core.errors import GroundworkError
from core.images import FILE_FORMATS, ImageRejected, decode_image, probe_image
from retrieval.kb import Collection, KnowledgeBase, stable_id
from retrieval.text import clean_text

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Decoders Pillow may use, whatever the extension says: not EPS/PS (Ghostscript), not the
# dozens of rarely used plugins a crafted file could otherwise reach.
IMAGE_FORMATS = list(FILE_FORMATS)
TEXT_EXTS = {".md", ".markdown", ".txt", ".text", ".rst"}
CAPTION_KEYS = ("caption", "description", "title", "alt")
SAVE_EVERY_FILES = 500

SkipReason = Literal[
    "unchanged",
    "duplicate",
    "unreadable",
    "too large",
    "too many pixels",
    "symlink outside folder",
    "not an image",
    "not UTF-8 text",
    "empty",
    "unsupported type",
    "no CLIP model",
]


class Skipped(BaseModel):
    path: str
    reason: SkipReason
    detail: str = ""


class IngestReport(BaseModel):
    files_seen: int = 0
    images_added: int = 0
    images_updated: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    passages_added: int = 0
    removed_entries: int = 0
    skipped: list[Skipped] = Field(default_factory=list)
    seconds: float = 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s.reason] = out.get(s.reason, 0) + 1
        return out


class Progress(BaseModel):
    """Sent after each file; `total` is known up front (the walk happens first)."""

    done: int
    total: int
    path: str
    outcome: str


ProgressFn = Callable[[Progress], None]


def caption_from_name(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem)
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", words)
    return re.sub(r"\s+", " ", words).strip()


def caption_sidecars(path: Path) -> list[Path]:
    return [
        path.with_suffix(".txt"),
        path.with_name(path.name + ".txt"),
        path.with_suffix(".json"),
        path.with_name(path.name + ".json"),
    ]


class Refused(GroundworkError):
    """A file ingestion will not read, and why (internal: becomes a `Skipped` row)."""

    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: SkipReason = reason
        self.detail = detail


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_confined(path: Path, root: Path | None, limit: int, what: str = "file") -> bytes:
    """The bytes of `path`, refusing (Refused) a link that resolves outside `root` (None: no
    confinement, for a file the user named), anything but a regular file, and more than
    `limit` bytes. OSError when it cannot be read."""
    real = Path(os.path.realpath(path))
    if root is not None and not _inside(real, root):
        raise Refused("symlink outside folder", f"{what} links to {real}, outside {root}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(real, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("unreadable", f"{what} is not a regular file")
        too_big = f"{what} {st.st_size / 1e6:.2f} MB > the {limit / 1e6:.2f} MB cap"
        if st.st_size > limit:
            raise Refused("too large", too_big)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew after the fstat
        raise Refused("too large", too_big)
    return data


def _caption(path: Path, root: Path | None, max_bytes: int) -> tuple[str, list[Skipped]]:
    """(caption, sidecars refused): the first usable sidecar, else the file name."""
    refused: list[Skipped] = []
    for side in caption_sidecars(path):
        if not side.is_file():
            continue
        try:
            raw = read_confined(side, root, max_bytes, "caption sidecar").decode("utf-8-sig")
        except Refused as exc:
            detail = f"{exc.detail}; caption not read from it"
            refused.append(Skipped(path=str(side), reason=exc.reason, detail=detail))
            continue
        except (OSError, UnicodeDecodeError):
            continue
        if side.suffix == ".json":
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(data, dict):
                for key in CAPTION_KEYS:
                    value = data.get(key)
                    if isinstance(value, str) and clean_text(value).strip():
                        return clean_text(value).strip(), refused
            continue
        if clean_text(raw).strip():
            return clean_text(raw).strip(), refused
    return clean_text(caption_from_name(path)), refused


def read_caption(path: Path, root: Path | None = None, max_bytes: int = 16_384) -> str:
    """The caption of an image: sidecar (confined to `root` when given) or file name."""
    return _caption(path, root, max_bytes)[0]


@dataclass(frozen=True)
class Walked:
    """A file to ingest (`refused` None) or a link the walk would not follow."""

    path: Path  # as found (a link keeps its own name)
    root: Path | None  # resolved folder it must stay inside; None = named by the user
    sidecar_root: Path  # resolved folder its caption sidecars must stay inside
    refused: Refused | None = None


def _link_loop(path: Path) -> Refused | None:
    """A refusal when `path` is a symlink that never reaches a file (a loop, or a chain too
    long to follow): one "skipped" line instead of Path.resolve()'s RuntimeError."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return Refused("unreadable", "symlink loop: the link leads back to itself")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Refused("unreadable", "symlink loop: too many levels of links")
        return None  # dangling: reported as "no such file" when it is read
    return None


def walk(paths: Iterable[Path]) -> list[Walked]:
    """Files under `paths` (hidden files/folders skipped), in a stable order. Folder links are
    not descended; file links are kept when they resolve inside their folder, else refused."""
    out: list[Walked] = []
    for given in paths:
        given = Path(given)
        if not given.is_dir():  # a file (link or not) named by the user, or missing
            parent = Path(os.path.realpath(given.parent))
            out.append(Walked(given, None, parent, _link_loop(given)))
            continue
        root = Path(os.path.realpath(given))
        found: list[Walked] = []
        for dirpath, dirnames, filenames in os.walk(given, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                sub = here / d
                if sub.is_symlink():
                    real = Path(os.path.realpath(sub))
                    if not _inside(real, root):
                        why = Refused(
                            "symlink outside folder", f"folder link to {real}, outside {root}"
                        )
                        found.append(Walked(sub, root, root, why))
            for name in filenames:
                if name.startswith("."):
                    continue
                p = here / name
                if p.is_symlink():
                    real = Path(os.path.realpath(p))
                    if not _inside(real, root):
                        why = Refused("symlink outside folder", f"links to {real}, outside {root}")
                        found.append(Walked(p, root, root, why))
                        continue
                    if not real.is_file():
                        continue
                elif not p.is_file():
                    continue  # FIFOs, sockets, devices
                found.append(Walked(p, root, root))
        out.extend(sorted(found, key=lambda w: str(w.path)))
    return out


def _paragraphs(text: str) -> Iterator[str]:
    """Blocks of non-blank lines. One pass over the lines: the `\\n\\s*\\n` split and the
    heading regex it replaces backtracked quadratically on long runs of spaces (160 KB of
    spaces took 139 s)."""
    buf: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            buf.append(line)
        elif buf:
            yield "\n".join(buf).strip()
            buf = []
    if buf:
        yield "\n".join(buf).strip()


def _heading(line: str) -> str | None:
    """The title of a Markdown ATX heading line ("## Title ##" -> "Title"), else None: what
    `^(#{1,6})\\s+(.+?)\\s*#*$` matched, computed with linear string operations (that regex
    backtracked quadratically on long runs of spaces)."""
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6:
        return None
    rest = line[hashes:]
    body = rest.lstrip()
    if len(body) == len(rest):  # no whitespace after the hashes
        return None
    if not body:  # "#" + whitespace: a heading with an empty title if there are two or more
        return "" if len(rest) >= 2 else None
    core = body.rstrip("#").rstrip()  # drop the closing "  ###"
    return body[: max(1, len(core))].strip()


def chunk_text(text: str, chunk_chars: int = 800, overlap: int = 100) -> list[tuple[str, str]]:
    """(heading, passage) pairs: paragraphs packed up to `chunk_chars`; a longer paragraph is
    cut in windows on whitespace with `overlap` characters repeated, so no fact is split blind.
    Linear in the text's length (see `_paragraphs`)."""
    heading = ""
    chunks: list[tuple[str, str]] = []
    buf: list[str] = []
    buf_len = 0
    buf_heading = ""

    def flush() -> None:
        nonlocal buf, buf_len
        if buf:
            chunks.append((buf_heading, "\n\n".join(buf).strip()))
            buf, buf_len = [], 0

    for para in _paragraphs(text.replace("\r\n", "\n")):
        lines = para.splitlines()
        title = _heading(lines[0])
        if title is not None:
            flush()
            heading = title
            buf_heading = heading
            rest = "\n".join(lines[1:]).strip()
            if not rest:
                continue
            para = rest
        if len(para) > chunk_chars:
            flush()
            buf_heading = heading
            for piece in _windows(para, chunk_chars, overlap):
                chunks.append((heading, piece))
            continue
        if buf and buf_len + len(para) > chunk_chars:
            flush()
        if not buf:
            buf_heading = heading
        buf.append(para)
        buf_len += len(para) + 2
    flush()
    return [(h, c) for h, c in chunks if c]


def _windows(text: str, size: int, overlap: int) -> list[str]:
    out = []
    start = 0
    overlap = min(overlap, size // 2)
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space if space > start else end
        out.append(text[start:end].strip())
        if end >= len(text):
            break
        nxt = end - overlap
        space = text.find(" ", nxt, end)
        start = space + 1 if space != -1 else max(nxt, start + 1)
    return out


def _shrink(im: Image.Image, short_side: int = 512) -> Image.Image:
    """A batch holds decoded images until it is embedded: cap each (CLIP uses <= 448 px)."""
    from PIL import Image as PILImage

    w, h = im.size
    if min(w, h) <= short_side:
        return im
    scale = short_side / min(w, h)
    return im.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.BICUBIC
    )


class _Batch:
    def __init__(self, which: Collection) -> None:
        self.which = which
        self.ids: list[int] = []
        self.metas: list[dict[str, Any]] = []
        self.items: list[Any] = []  # texts or PIL images

    def __len__(self) -> int:
        return len(self.ids)


class Ingestor:
    """Why a class: batches of images/passages fill across files before each embed call."""

    def __init__(self, kb: KnowledgeBase, progress: ProgressFn | None = None) -> None:
        self.kb = kb
        self.settings = kb.settings
        self.progress = progress
        self.report = IngestReport()
        self._batches = {"images": _Batch("images"), "passages": _Batch("passages")}
        self._known: dict[str, dict[str, tuple[str, list[int]]]] = {}
        self._by_sha: dict[str, dict[str, str]] = {}

    def _index_state(self) -> None:
        """What is indexed now (called under the write lock, after any reload)."""
        self._known = {w: self.kb.file_entries(w) for w in ("images", "passages")}
        self._by_sha = {
            w: {sha: p for p, (sha, _) in entries.items()} for w, entries in self._known.items()
        }

    def run(self, paths: list[Path], *, prune: bool = False) -> IngestReport:
        t0 = time.perf_counter()
        walked = walk(paths)
        # Sidecars are captions, not documents; compared by their own (unresolved) path so a
        # sidecar that links elsewhere cannot hide the file it points to.
        captions = {
            s.absolute()
            for w in walked
            if w.path.suffix.lower() in IMAGE_EXTS
            for s in caption_sidecars(w.path)
            if s.is_file() or s.is_symlink()
        }
        files = [w for w in walked if w.path.absolute() not in captions]
        # Overlapping roots: once each (a link inside its folder and its target count once).
        files = list(
            {(w.path.absolute() if w.refused else w.path.resolve()): w for w in files}.values()
        )
        total = len(files)
        # Load the models the files need before touching any: a configuration error (missing
        # weights, mismatched index) stops the run before work is done, not half-way through.
        exts = {w.path.suffix.lower() for w in files if w.refused is None}
        if exts & IMAGE_EXTS and self.settings.clip_model:
            self.kb.embedder("images")
        if exts & TEXT_EXTS:
            self.kb.embedder("passages")
        with self.kb.writing():
            self._index_state()
            for n, w in enumerate(files, 1):
                outcome = self._one(w)
                self.report.files_seen = n
                if self.progress is not None:
                    self.progress(Progress(done=n, total=total, path=str(w.path), outcome=outcome))
                if n % SAVE_EVERY_FILES == 0:
                    self._flush_all()
                    self.kb.save()
            self._flush_all()
            if prune:
                seen = {w.path.resolve() for w in files if w.refused is None}
                self.report.removed_entries += self._prune(paths, seen)
            self.kb.save()
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _skip(self, path: Path, reason: SkipReason, detail: str = "") -> str:
        self.report.skipped.append(Skipped(path=str(path), reason=reason, detail=detail))
        return f"skipped: {reason}"

    def _one(self, w: Walked) -> str:
        path = w.path
        if w.refused is not None:
            return self._skip(path, w.refused.reason, w.refused.detail)
        ext = path.suffix.lower()
        if not path.is_file():
            what = "not a regular file" if path.exists() else "no such file"
            return self._skip(path, "unreadable", what)
        limit = int(self.settings.max_file_mb * 1024 * 1024)
        try:
            size = path.stat().st_size
        except OSError as exc:
            return self._skip(path, "unreadable", str(exc))
        if size > limit:
            return self._skip(
                path, "too large", f"{size / 1e6:.1f} MB > {self.settings.max_file_mb} MB"
            )
        if ext in IMAGE_EXTS:
            if not self.settings.clip_model:
                return self._skip(path, "no CLIP model", "set retrieval.clip_model to index images")
            return self._guarded(self._image, w, limit)
        if ext in TEXT_EXTS:
            doc_limit = min(limit, int(self.settings.max_document_mb * 1024 * 1024))
            if size > doc_limit:
                return self._skip(
                    path,
                    "too large",
                    f"document {size / 1e6:.1f} MB > {self.settings.max_document_mb} MB "
                    "(retrieval.max_document_mb)",
                )
            return self._guarded(self._document, w, doc_limit)
        why = (
            "PDF is not parsed: convert it to text or Markdown"
            if ext == ".pdf"
            else (f"'{ext or path.name}' is neither an image nor a text document")
        )
        return self._skip(path, "unsupported type", why)

    def _guarded(self, handler: Callable[[Walked, bytes], str], w: Walked, limit: int) -> str:
        """Read through `read_confined` (links, special files, size) before any parsing."""
        try:
            data = read_confined(w.path, w.root, limit)
        except Refused as exc:
            return self._skip(w.path, exc.reason, exc.detail)
        except OSError as exc:
            return self._skip(w.path, "unreadable", exc.strerror or str(exc))
        return handler(w, data)

    def _check_known(self, which: str, path: Path, sha: str) -> tuple[str | None, list[int]]:
        """('unchanged' | 'duplicate' | None, stale ids to replace)."""
        key = str(path.resolve())
        known = self._known[which].get(key)
        if known is not None and known[0] == sha:
            return "unchanged", []
        other = self._by_sha[which].get(sha)
        if other is not None and other != key and other in self._known[which]:
            return "duplicate", []
        return None, known[1] if known else []

    def _image(self, w: Walked, data: bytes) -> str:
        path = w.path
        sha = hashlib.sha256(data).hexdigest()
        state, stale = self._check_known("images", path, sha)
        if state == "unchanged":
            return self._skip(path, "unchanged")
        if state == "duplicate":
            return self._skip(path, "duplicate", f"same content as {self._by_sha['images'][sha]}")
        cap = self.settings.max_image_pixels
        try:
            # The one guarded decoder (core.images): header checked against the pixel
            # cap before any pixel is decoded; bombs, truncation and junk become ImageRejected.
            probe = probe_image(data, IMAGE_FORMATS, max_pixels=2**62, what="image")
            if probe.pixels > cap:
                return self._skip(
                    path,
                    "too many pixels",
                    f"{probe.width}x{probe.height} = {probe.pixels:,} pixels > the {cap:,} cap "
                    "(retrieval.max_image_pixels); not decoded",
                )
            # JPEG: decode at reduced size, CLIP needs little.
            decoded = decode_image(data, IMAGE_FORMATS, max_pixels=cap, jpeg_draft=512)
        except ImageRejected as exc:
            bomb = "decompression bomb" in str(exc)
            return self._skip(path, "too many pixels" if bomb else "not an image", str(exc))
        rgb = _shrink(decoded.image)
        width, height = decoded.width, decoded.height
        caption, refused_sidecars = _caption(path, w.sidecar_root, self.settings.max_caption_bytes)
        self.report.skipped.extend(refused_sidecars)
        key = str(path.resolve())
        new_id = stable_id(f"image:{key}")
        for old in stale:
            if old != new_id:
                self.kb.delete("images", [old])
        meta = {
            "kind": "image",
            "path": key,
            "caption": caption,
            "source": path.resolve().as_uri(),
            "sha256": sha,
            "width": width,
            "height": height,
        }
        b = self._batches["images"]
        b.ids.append(new_id)
        b.metas.append(meta)
        b.items.append(rgb)
        self._remember("images", key, sha, [new_id])
        if stale:
            self.report.images_updated += 1
        else:
            self.report.images_added += 1
        if len(b) >= self.settings.batch_size:
            self._flush(b)
        return "updated" if stale else "added"

    def _document(self, w: Walked, raw: bytes) -> str:
        path = w.path
        sha = hashlib.sha256(raw).hexdigest()
        state, stale = self._check_known("passages", path, sha)
        if state == "unchanged":
            return self._skip(path, "unchanged")
        if state == "duplicate":
            return self._skip(path, "duplicate", f"same content as {self._by_sha['passages'][sha]}")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return self._skip(path, "not UTF-8 text", str(exc))
        if "\x00" in text:
            return self._skip(path, "not UTF-8 text", "contains NUL bytes (binary file?)")
        chunks = chunk_text(
            clean_text(text), self.settings.chunk_chars, self.settings.chunk_overlap
        )
        if not chunks:
            return self._skip(path, "empty")
        key = str(path.resolve())
        if stale:
            self.kb.delete("passages", stale)
        b = self._batches["passages"]
        ids = []
        for n, (heading, passage) in enumerate(chunks):
            id_ = stable_id(f"text:{key}#{n}")
            ids.append(id_)
            b.ids.append(id_)
            b.metas.append(
                {
                    "kind": "text",
                    "path": key,
                    "caption": heading or clean_text(path.stem),
                    "text": passage,
                    "chunk": n,
                    "source": path.resolve().as_uri(),
                    "sha256": sha,
                }
            )
            # The heading is embedded with the passage: it often names what the passage is about.
            b.items.append(f"{heading}\n{passage}" if heading else passage)
        self._remember("passages", key, sha, ids)
        self.report.passages_added += len(ids)
        if stale:
            self.report.documents_updated += 1
        else:
            self.report.documents_added += 1
        if len(b) >= self.settings.batch_size:
            self._flush(b)
        return "updated" if stale else "added"

    def _remember(self, which: str, key: str, sha: str, ids: list[int]) -> None:
        self._known[which][key] = (sha, ids)
        self._by_sha[which][sha] = key

    def _flush(self, b: _Batch) -> None:
        if not len(b):
            return
        which: Collection = b.which
        emb = self.kb.embedder(which)
        vecs: np.ndarray
        if which == "images":
            images: list[Image.Image] = b.items
            vecs = emb.embed_images(images)
        else:
            vecs = emb.embed_texts(list(b.items))
        self.kb.upsert(which, b.ids, vecs, b.metas)
        b.ids, b.metas, b.items = [], [], []

    def _flush_all(self) -> None:
        for b in self._batches.values():
            self._flush(b)

    def _prune(self, roots: list[Path], seen: set[Path]) -> int:
        """Entries under the given folders whose files no longer exist (or were not seen)."""
        prefixes = [str(Path(r).resolve()) for r in roots]
        gone = []
        for which in ("images", "passages"):
            for p in self.kb.file_entries(which):
                under = any(p == pre or p.startswith(pre.rstrip("/") + "/") for pre in prefixes)
                if under and Path(p) not in seen:
                    gone.append(Path(p))
        return self.kb.remove_paths(gone) if gone else 0


def ingest(
    kb: KnowledgeBase,
    paths: list[Path],
    *,
    progress: ProgressFn | None = None,
    prune: bool = False,
) -> IngestReport:
    """Add or refresh `paths` (files or folders) in `kb` and save it atomically at the end
    (and every few hundred files, so a crash mid-way keeps most of the work)."""
    if not paths:
        raise ValueError("nothing to ingest: give at least one file or folder")
    return Ingestor(kb, progress).run(paths, prune=prune)
