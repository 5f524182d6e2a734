"""Turning downloaded bytes into images the rest of Groundwork can trust.

An image is accepted only after a full decode: a header that parses says nothing about the
pixel data behind it, and a small file can declare billions of pixels (a decompression bomb).
The pixel cap is checked from the header before any pixel is decoded, so a bomb costs nothing.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections import deque
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from core.errors import GroundworkError

ACCEPTED_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}


class ImageRejected(GroundworkError, ValueError):
    """Bytes that are not an acceptable image; the message says why."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, fully decoded
    media_type: str
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode fully or raise ImageRejected. CPU-bound: call it in a worker thread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ImageRejected(f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image declares {width}x{height} = {width * height} pixels, over the "
                    f"{max_pixels}-pixel cap (decompression-bomb guard); not decoded"
                )
            media_type = ACCEPTED_FORMATS[str(im.format)]
            im.load()
            rgb = im.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused by Pillow: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"image does not decode: {type(exc).__name__}: {exc}") from exc
    return DecodedImage(image=rgb, media_type=media_type, width=width, height=height)


def probe_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone (no pixel is decoded): what a decode will cost,
    known before paying it."""
    try:
        with Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"image does not decode: {type(exc).__name__}: {exc}") from exc


def decode_reduced(data: bytes, max_pixels: int, max_side: int) -> DecodedImage:
    """Decode fully (the proof the bytes are an image), then keep only a copy at most
    `max_side` pixels on its longest side: ranking, fingerprints and thumbnails need no more,
    and the full decode is freed when this returns. `width`/`height` stay the original's."""
    decoded = decode_image(data, max_pixels)
    if max(decoded.image.size) > max_side:
        decoded.image = thumbnail(decoded.image, max_side)
    return decoded


class PixelBudget:
    """A bound on the decoded pixels held at once, shared by every image decode of a toolkit.

    A weighted semaphore: `acquire(n)` waits (first come, first served, so one huge image is
    not starved by many small ones) until `n` more pixels fit under `capacity`. A request
    larger than the capacity is clamped to it, so it runs alone instead of never. `release` is
    synchronous so that a decode thread that outlives a cancelled caller can return its share
    from a done-callback, only when its memory is really gone.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pixel budget must be positive, got {capacity}")
        self.capacity = capacity
        self.held = 0
        self.peak = 0  # the most ever held at once (benchmarks, tests)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _grant(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    async def acquire(self, pixels: int) -> int:
        """Wait for `pixels` (clamped to 1..capacity) to fit; returns what to `release`."""
        n = max(1, min(int(pixels), self.capacity))
        if not self._waiters and self.held + n <= self.capacity:
            self._grant(n)
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted in the same tick we were cancelled: give it back
            else:
                self._wake()  # we may have been blocking smaller requests behind us
            raise
        return n

    def release(self, n: int) -> None:
        self.held -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.held + n > self.capacity:
                return
            self._waiters.popleft()
            self._grant(n)
            fut.set_result(None)


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: survives resizing and re-encoding, unlike a byte hash."""
    small = image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    px = small.tobytes()
    bits = 0
    for row in range(size):
        base = row * (size + 1)
        for col in range(size):
            bits = (bits << 1) | (px[base + col] > px[base + col + 1])
    return bits


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def color_signature(image: Image.Image) -> bytes:
    """Mean colour of each cell of a 2x2 grid: dHash only sees luminance gradients, so the same
    layout in red and in teal (a product in two colours) would otherwise count as one image."""
    return image.convert("RGB").resize((2, 2), Image.Resampling.BOX).tobytes()


def color_distance(a: bytes, b: bytes) -> int:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0)


@dataclass(frozen=True)
class Fingerprint:
    """Perceptual identity of an image: survives resizing and re-encoding, not recolouring."""

    dhash: int
    colors: bytes

    @classmethod
    def of(cls, image: Image.Image) -> Fingerprint:
        return cls(dhash(image), color_signature(image))

    def near(self, other: Fingerprint, max_bits: int, max_color: int = 40) -> bool:
        return (
            hamming(self.dhash, other.dhash) <= max_bits
            and color_distance(self.colors, other.colors) <= max_color
        )


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return thumb
