"""Generators of hostile inputs for the tool tests and `benchmarks/bench_hostile.py`.

Each generator takes a `random.Random` (or explicit sizes) so a test draws many variants of a
class instead of pinning one example: image bombs (tiny files whose headers declare huge
canvases) in every format the tools or ingestion accept, and pathological HTML pages.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

# --- image bombs -----------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    interlace: int = 0,
    frames: int = 1,
) -> bytes:
    """A PNG whose IHDR declares `width` x `height`, with one tiny IDAT (and an acTL when
    `frames` > 1, i.e. an APNG)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    extra = b""
    if frames > 1:
        extra = _chunk(b"acTL", struct.pack(">II", frames, 0)) + _chunk(
            b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 1, 0, 0)
        )
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def gif_bomb(
    width: int, height: int, *, frames: int = 1, frame_size: tuple[int, int] | None = None
) -> bytes:
    """A GIF of ~35 bytes whose logical screen (and first frame) declare `width` x `height`."""
    fw, fh = frame_size or (width, height)
    out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    for _ in range(max(1, frames)):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 0.1 s per frame
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0)
        out += b"\x02\x02\x4c\x01\x00"  # LZW min code size 2, one sub-block, terminator
    return out + b"\x3b"


def webp_lossless_bomb(width: int, height: int, *, alpha: bool = False) -> bytes:
    """A ~38-byte lossless WebP (VP8L) declaring up to 16384 x 16384."""
    bits = (width - 1) | ((height - 1) << 14) | (int(alpha) << 28)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 9
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _u24(n: int) -> bytes:
    return struct.pack("<I", n)[:3]


def webp_extended_bomb(
    width: int, height: int, *, animated: bool = False, frames: int = 2
) -> bytes:
    """A VP8X WebP whose canvas is `width` x `height` (24-bit sizes), optionally animated
    (ANIM + ANMF frames each holding a tiny VP8L image)."""
    flags = 0x02 if animated else 0x00
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) + _u24(width - 1)
    vp8x += _u24(height - 1)
    body = vp8x
    inner = webp_lossless_bomb(min(width, 16), min(height, 16))[12:]
    if animated:
        body += b"ANIM" + struct.pack("<I", 6) + b"\0\0\0\0\0\0"
        for _ in range(frames):
            anmf = _u24(0) + _u24(0) + _u24(min(width, 16) - 1) + _u24(min(height, 16) - 1)
            anmf += _u24(100) + b"\0" + inner
            body += b"ANMF" + struct.pack("<I", len(anmf)) + anmf
    else:
        body += inner
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def jpeg_bomb(width: int, height: int, *, components: int = 3) -> bytes:
    """SOI, a baseline SOF0 declaring `width` x `height` (<= 65535), a DQT/DHT-less SOS, EOI."""
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    sof = struct.pack(">BHHB", 8, height, width, components) + comps
    sos = bytes([components]) + b"".join(bytes([i + 1, 0]) for i in range(components))
    sos += b"\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + b"\xff\xc0"
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xda"
        + struct.pack(">H", len(sos) + 2)
        + sos
        + b"\x00" * 8
        + b"\xff\xd9"
    )


def tiff_bomb(width: int, height: int, *, pages: int = 1, bits: int = 8, samples: int = 1) -> bytes:
    """A little-endian TIFF with `pages` IFDs, each declaring `width` x `height`, uncompressed,
    one strip pointing at 16 bytes of data."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for page in range(pages):
        entries = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, 1, bits),
            (259, 3, 1, 1),
            (262, 3, 1, 1 if samples == 1 else 2),
            (273, 4, 1, 0),  # strip offset, patched below
            (277, 3, 1, samples),
            (278, 4, 1, height),
            (279, 4, 1, 16),
        ]
        ifd_at = len(out)
        ifd_size = 2 + 12 * len(entries) + 4
        data_at = ifd_at + ifd_size
        next_ifd = data_at + 16 if page < pages - 1 else 0
        out += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            value = data_at if tag == 273 else value
            packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, typ, count) + packed
        out += struct.pack("<I", next_ifd)
        out += b"\0" * 16
    return bytes(out)


BombMaker = Callable[[random.Random], bytes]


def _dims(rng: random.Random, lo: int, hi: int) -> tuple[int, int]:
    """Either just over the 40 Mpx cap (under Pillow's own bomb threshold, so only our cap
    stands in the way) or anywhere up to the format's maximum."""
    if rng.random() < 0.5:
        side = rng.randint(6_400, 9_000)
        return side, rng.randint(max(6_400, 40_000_001 // side + 1), 9_400)
    return rng.randint(lo, hi), rng.randint(lo, hi)


BOMBS: dict[str, BombMaker] = {
    "png": lambda r: png_bomb(
        *_dims(r, 20_000, 60_000),
        bit_depth=r.choice([8, 16]),
        color_type=r.choice([0, 2, 6]),
        interlace=r.choice([0, 1]),
    ),
    "apng": lambda r: png_bomb(*_dims(r, 9_000, 30_000), frames=r.randint(2, 50)),
    "gif": lambda r: gif_bomb(*_dims(r, 9_500, 65_535), frames=r.randint(1, 4)),
    "webp-lossless": lambda r: webp_lossless_bomb(*_dims(r, 9_000, 16_384), alpha=r.random() < 0.5),
    "webp-animated": lambda r: webp_extended_bomb(
        *_dims(r, 9_000, 40_000), animated=True, frames=r.randint(2, 6)
    ),
    "jpeg": lambda r: jpeg_bomb(*_dims(r, 9_500, 65_535), components=r.choice([1, 3])),
    "tiff": lambda r: tiff_bomb(*_dims(r, 9_500, 60_000), pages=r.randint(1, 5)),
}
"""Bombs over Pillow's own threshold or our 40 Mpx cap: refused from the header alone."""

COSTLY: dict[str, BombMaker] = {
    # Under the 40 Mpx pixel cap, but a lossless WebP costs ~20 bytes per pixel to decode:
    # 16 Mpx is ~330 MB, the case of issue 22.4 (12 such 38-byte files reached 2.5 GB).
    "webp-lossless": lambda r: webp_lossless_bomb(r.randint(3_000, 4_000), r.randint(4_000, 6_000)),
    "webp-animated": lambda r: webp_extended_bomb(
        r.randint(3_000, 4_000), r.randint(4_000, 6_000), animated=True
    ),
    "gif": lambda r: gif_bomb(r.randint(4_000, 6_000), r.randint(4_000, 6_000), frames=3),
    "png": lambda r: png_bomb(
        r.randint(4_000, 6_000), r.randint(4_000, 6_000), bit_depth=16, color_type=6
    ),
}
"""Worst cases the pixel cap lets through: only a per-format byte count can bound them."""

# --- pathological pages -----------------------------------------------------------------------

PAGES: dict[str, Callable[[int, random.Random], str]] = {
    "open-comments": lambda n, r: "<html><body><p>intro text here.</p>" + "<!--" * (n // 4),
    "deep-unclosed": lambda n, r: (
        "<html><body>"
        + "".join(f"<{r.choice(['div', 'span', 'b', 'section', 'p'])}>" for _ in range(n // 6))
        + "the end of a very deep page"
    ),
    "end-tag-storm": lambda n, r: (
        "<html><body><div><p>start of the text.</p>"
        + "".join(f"</{r.choice(['div', 'p', 'span', 'li', 'a', 'x'])}>" for _ in range(n // 6))
    ),
    "paragraph-storm": lambda n, r: "<html><body>" + "<p>word word word." * (n // 18),
    "table-storm": lambda n, r: "<html><body><table>" + "<tr><td>a b c d" * (n // 15),
    "attribute-flood": lambda n, r: "<html><body><div " + "a=b " * (n // 4) + ">x</div>",
    "lt-flood": lambda n, r: "<html><body>" + "<" * n,
    "entity-flood": lambda n, r: "<html><body><p>" + "&#" * (n // 2),
    "cdata-script": lambda n, r: "<html><body><script>" + "<!--<script>" * (n // 12),
}


def hostile_page(kind: str, size: int, seed: int = 0) -> str:
    """A `size`-character pathological page of `kind` (see PAGES)."""
    return PAGES[kind](size, random.Random(seed))[: max(size, 64)]
