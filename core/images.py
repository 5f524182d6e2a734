"""The one guarded way Groundwork decodes image bytes it did not make itself.

Web downloads (`tools`) and knowledge-base files (`retrieval.ingest`, `KnowledgeBase.
similar_images`) are hostile input: a 34-byte WebP, a 35-byte GIF or a PNG header can declare
billions of pixels (a decompression bomb), a file can stop half-way, and Pillow's plugins raise
a zoo of exception types on malformed data (`DecompressionBombError`, `OSError`, `SyntaxError`,
`struct.error`, `IndexError`...). Every decoder call goes through `probe_image` (header only)
and `decode_image` (the full decode), which turn each of those into `ImageRejected`: a failure
of that one image, never of the run.

The cost of a decode is known before paying it. `probe_image` reads the header and estimates
the peak memory of decoding the first frame and converting it to RGB, in BYTES, per format,
because bytes per pixel vary five-fold between formats (measured peak RSS on Pillow 13 and a
3000x3000 image, see `benchmarks/bench_hostile.py`):

- PNG, BMP, JPEG: the stored image (1 byte/pixel for 1/L/P, 2 for I;16, 4 for
  RGB/RGBA/I/F) plus the RGB copy (4): 5 to 8 bytes per pixel;
- GIF, APNG with more than one frame: as PNG, plus one compositing canvas (+4);
- TIFF: as PNG, plus libtiff's strip/tile buffer (+1);
- WebP, lossy or lossless: libwebp decodes through its own RGBA buffers, ~18 measured (the
  "~15" of issue 22): budgeted at 20;
- animated WebP: the animation decoder keeps two canvases on top: 24.

Only the first frame (GIF, WebP, APNG) or page (TIFF) is ever decoded: nothing here seeks, so
the count of frames or pages adds a canvas at most, never a multiple.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.errors import GroundworkError

if TYPE_CHECKING:
    from PIL import Image

WEB_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP")
"""What the web tools accept (what a browser shows); no TIFF/BMP from strangers."""
FILE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""What knowledge-base ingestion accepts: not EPS/PS (Ghostscript), not the dozens of rarely
used plugins a crafted file could otherwise reach."""

MEDIA_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}

# Everything Pillow's decoders were seen to raise on malformed or hostile bytes. Pillow's own
# DecompressionBombError derives from Exception directly, which is how one escaped a tool.
_DECODER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # UnidentifiedImageError, "image file is truncated", decoder errors
    SyntaxError,  # "not a PNG file", broken chunks
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
)

_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_RGB_COPY = 4  # Pillow keeps RGB as 32-bit pixels


class ImageRejected(GroundworkError, ValueError):
    """Bytes that are not an acceptable image (not decodable, too big, a bomb): the message
    says why. Callers treat it as the failure of that one image."""

    retryable: ClassVar[bool] = False
    """The same bytes fail the same way: a queue worker dead-letters such a job at once."""


@dataclass(frozen=True)
class ImageProbe:
    """What the header says, and what a decode will cost (before paying it)."""

    format: str
    mode: str
    width: int
    height: int
    animated: bool
    decoded_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.format, "application/octet-stream")


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, fully decoded (possibly reduced, see `decode_image(max_side=)`)
    media_type: str
    width: int  # of the original
    height: int
    decoded_bytes: int  # the estimate the decode was budgeted at


def bytes_per_pixel(fmt: str, mode: str, animated: bool) -> int:
    """Peak bytes per pixel of decoding the first frame of `fmt` in `mode` and converting it
    to RGB (see the module docstring for the measurements behind each number)."""
    if fmt == "WEBP":
        return 24 if animated else 20
    stored = _STORED_BYTES.get(mode, 4)
    cost = stored + _RGB_COPY
    if fmt == "TIFF":
        cost += 1
    if animated and fmt in ("GIF", "PNG"):
        cost += 4
    return cost


def decode_cost(fmt: str, mode: str, width: int, height: int, animated: bool = False) -> int:
    """Bytes a decode of a `width` x `height` image of `fmt`/`mode` is budgeted at."""
    return max(1, width) * max(1, height) * bytes_per_pixel(fmt, mode, animated)


@functools.cache
def _quiet_pillow() -> None:
    """Pillow's bomb *warning* (89-179 Mpx) and its "Truncated File Read"-style UserWarnings
    are noise here: our own pixel cap (checked from the header) is stricter than the warning,
    and its hard `DecompressionBombError` is caught. The filters are installed once, module-
    scoped, because `warnings.catch_warnings` is not thread-safe (decodes run on threads)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


@contextmanager
def guarded(what: str = "image") -> Iterator[None]:
    """Every decoder failure (bomb, truncation, unknown format, malformed data) inside the
    block becomes `ImageRejected` naming `what`."""
    from PIL import Image

    _quiet_pillow()
    try:
        yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"{what}: decompression bomb refused by Pillow ({exc})") from exc
    except _DECODER_ERRORS as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ImageRejected(f"{what} does not decode: {type(exc).__name__}: {detail}") from exc


def _is_animated(im: Image.Image) -> bool:
    """Frame count without decoding any frame (GIF/APNG/WebP headers say it, or one skip of
    the first frame's data does); a broken second frame counts as animated (the safe side)."""
    try:
        return bool(getattr(im, "is_animated", False))
    except _DECODER_ERRORS:
        return True


def _check(probe: ImageProbe, max_pixels: int, max_bytes: int | None, what: str) -> None:
    if probe.width <= 0 or probe.height <= 0:
        raise ImageRejected(f"{what} has no pixels ({probe.width}x{probe.height})")
    if probe.pixels > max_pixels:
        raise ImageRejected(
            f"{what} declares {probe.width}x{probe.height} = {probe.pixels:,} pixels, over the "
            f"{max_pixels:,}-pixel cap (decompression-bomb guard); not decoded"
        )
    if max_bytes is not None and probe.decoded_bytes > max_bytes:
        raise ImageRejected(
            f"{what} ({probe.format} {probe.mode}, {probe.width}x{probe.height}) would take "
            f"~{probe.decoded_bytes / 1e6:,.0f} MB to decode, over the {max_bytes / 1e6:,.0f} MB "
            "cap; not decoded"
        )


def probe_image(
    data: bytes,
    formats: Sequence[str] = WEB_FORMATS,
    *,
    max_pixels: int,
    max_bytes: int | None = None,
    what: str = "image",
) -> ImageProbe:
    """The header's size, mode and frame count, and the decode's cost in bytes; no pixel is
    decoded. Raises `ImageRejected` (and nothing else) for an image it will not decode."""
    from PIL import Image

    with guarded(what), Image.open(io.BytesIO(data), formats=list(formats)) as im:
        width, height = im.size
        fmt = str(im.format)
        animated = _is_animated(im)
        probe = ImageProbe(
            format=fmt,
            mode=str(im.mode),
            width=int(width),
            height=int(height),
            animated=animated,
            decoded_bytes=decode_cost(fmt, str(im.mode), width, height, animated),
        )
    _check(probe, max_pixels, max_bytes, what)
    return probe


def decode_image(
    data: bytes,
    formats: Sequence[str] = WEB_FORMATS,
    *,
    max_pixels: int,
    max_bytes: int | None = None,
    max_side: int | None = None,
    jpeg_draft: int | None = None,
    what: str = "image",
) -> DecodedImage:
    """Decode the first frame fully (the proof the bytes are an image) and convert to RGB; with
    `max_side`, keep only a copy at most that long on its longest side. `jpeg_draft` lets a
    JPEG decode at a reduced scale no smaller than that many pixels a side. The caps are checked
    from the header first, so a bomb costs nothing. CPU-bound: call it in a worker thread.
    Raises `ImageRejected` and nothing else."""

    probe = probe_image(data, formats, max_pixels=max_pixels, max_bytes=max_bytes, what=what)
    rgb = _decode_first_frame(data, formats, max_side, jpeg_draft, what)
    if probe.decoded_bytes >= _TRIM_ABOVE:
        _return_freed_memory()
    return DecodedImage(
        image=rgb,
        media_type=probe.media_type,
        width=probe.width,
        height=probe.height,
        decoded_bytes=probe.decoded_bytes,
    )


def _decode_first_frame(
    data: bytes, formats: Sequence[str], max_side: int | None, jpeg_draft: int | None, what: str
) -> Image.Image:
    """The RGB first frame (reduced to `max_side`); every full-size buffer is garbage when this
    returns, so the caller can hand the memory back."""
    from PIL import Image

    with guarded(what), Image.open(io.BytesIO(data), formats=list(formats)) as im:
        if jpeg_draft is not None and im.format == "JPEG":
            im.draft("RGB", (jpeg_draft, jpeg_draft))
        im.load()
        rgb = im.convert("RGB")
        if max_side is not None and max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


_TRIM_ABOVE = 64 * 1024 * 1024


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    return trim


def _return_freed_memory() -> None:
    """Give the freed decode buffers back to the OS. Pillow allocates images in 16 MB blocks,
    under glibc's mmap threshold, so they land in the decoding thread's malloc arena; decodes
    on several threads would then each keep their own high-water mark (measured: twice the
    byte budget in RSS with four decode threads) unless the arenas are trimmed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def open_image_file(
    path: object,
    formats: Sequence[str] = FILE_FORMATS,
    *,
    max_pixels: int,
    max_file_bytes: int = 64 * 1024 * 1024,
    max_bytes: int | None = None,
    max_side: int | None = None,
    jpeg_draft: int | None = None,
) -> DecodedImage:
    """`decode_image` for a file the user named: read at most `max_file_bytes` (no special
    files), then the same guarded decode."""
    import os
    import stat

    what = str(path)
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageRejected(f"{what}: cannot be read ({exc.strerror or exc})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRejected(f"{what} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_file_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_file_bytes:
        raise ImageRejected(f"{what} is larger than {max_file_bytes / 1e6:.0f} MB; not decoded")
    return decode_image(
        data,
        formats,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        max_side=max_side,
        jpeg_draft=jpeg_draft,
        what=what,
    )
