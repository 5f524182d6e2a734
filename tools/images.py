"""Turning downloaded bytes into images the rest of Groundwork can trust.

Every decode goes through `core.images` (the one guarded image-open helper, shared with
knowledge-base ingestion): an image is accepted only after a full decode, since a header that
parses says nothing about the pixel data behind it; every decoder failure (a decompression
bomb, a truncated file, an unknown format) becomes `ImageRejected`, the failure of that one
image; and the memory a decode will take is estimated in bytes, per format, from the header
before any pixel is decoded, so a bomb costs nothing and `DecodeBudget` can bound what all
concurrent decodes hold together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from PIL import Image

from core.images import (
    MEDIA_TYPES,
    WEB_FORMATS,
    DecodedImage,
    ImageProbe,
    ImageRejected,
    decode_image,
    probe_image,
)

ACCEPTED_FORMATS = {fmt: MEDIA_TYPES[fmt] for fmt in WEB_FORMATS}

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodeBudget",
    "DecodedImage",
    "Fingerprint",
    "ImageProbe",
    "ImageRejected",
    "decode_image",
    "probe_image",
    "thumbnail",
]


class DecodeBudget:
    """A bound on the decoded bytes held at once, shared by every image decode of a toolkit.

    A weighted semaphore: `acquire(n)` waits (first come, first served, so one huge image is
    not starved by many small ones) until `n` more bytes fit under `capacity`. A request
    larger than the capacity is clamped to it, so it runs alone instead of never. `release` is
    synchronous so that a decode thread that outlives a cancelled caller can return its share
    from a done-callback, only when its memory is really gone.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"decode budget must be positive, got {capacity}")
        self.capacity = capacity
        self.held = 0
        self.peak = 0  # the most ever held at once (benchmarks, tests)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _grant(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    async def acquire(self, amount: int) -> int:
        """Wait for `amount` (clamped to 1..capacity) to fit; returns what to `release`."""
        n = max(1, min(int(amount), self.capacity))
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
