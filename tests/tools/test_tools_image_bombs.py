"""Issue 22.1 + 22.4: an image bomb, a truncated file or junk among search results fails that
one image, never the call or the run; the decode budget counts BYTES per format before any
pixel is decoded. Every class is drawn as many generated variants (seeds, hypothesis)."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import tools.toolkit as toolkit_module
from core.artifacts import ArtifactStore
from core.images import (
    FILE_FORMATS,
    WEB_FORMATS,
    ImageRejected,
    bytes_per_pixel,
    decode_image,
    probe_image,
)
from tests.support.hostile import BOMBS, COSTLY
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.observations import ImageHit, ImageRegistry
from tools.toolkit import Toolkit

CAP = 40_000_000
SEEDS = range(5)
MEDIA = {
    "png": "image/png",
    "apng": "image/png",
    "gif": "image/gif",
    "webp-lossless": "image/webp",
    "webp-animated": "image/webp",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_every_bomb_variant_is_refused_from_its_header(kind: str, seed: int) -> None:
    data = BOMBS[kind](random.Random(seed))
    assert len(data) < 1_000  # tiny files: the header is the whole attack
    with pytest.raises(ImageRejected, match="bomb|pixel cap"):
        probe_image(data, FILE_FORMATS, max_pixels=CAP)
    with pytest.raises(ImageRejected, match="bomb|pixel cap"):
        decode_image(data, FILE_FORMATS, max_pixels=CAP)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", sorted(COSTLY))
def test_the_budget_counts_bytes_per_format(kind: str, seed: int) -> None:
    """Under the pixel cap, a costly format is refused on its byte count alone, and WebP is
    counted at what libwebp really takes, not at 3 bytes per pixel."""
    data = COSTLY[kind](random.Random(seed))
    probe = probe_image(data, FILE_FORMATS, max_pixels=CAP)
    assert probe.pixels <= CAP
    assert probe.decoded_bytes >= probe.pixels * 8
    if probe.format == "WEBP":
        assert probe.decoded_bytes >= probe.pixels * 18
    with pytest.raises(ImageRejected, match="MB cap"):
        probe_image(data, FILE_FORMATS, max_pixels=CAP, max_bytes=probe.decoded_bytes - 1)


def test_bytes_per_pixel_follow_format_mode_and_frames() -> None:
    assert bytes_per_pixel("WEBP", "RGB", False) >= 18
    assert bytes_per_pixel("WEBP", "RGBA", True) > bytes_per_pixel("WEBP", "RGBA", False)
    assert bytes_per_pixel("PNG", "I;16", False) < bytes_per_pixel("PNG", "RGBA", False)
    assert bytes_per_pixel("PNG", "L", False) < bytes_per_pixel("PNG", "I;16", False)
    assert bytes_per_pixel("GIF", "P", True) > bytes_per_pixel("GIF", "P", False)
    assert bytes_per_pixel("TIFF", "RGB", False) > bytes_per_pixel("PNG", "RGB", False)


def _valid(fmt: str, rng: random.Random) -> bytes:
    size = (rng.randint(1, 40), rng.randint(1, 40))
    mode = {"JPEG": "RGB", "GIF": "P", "BMP": "RGB"}.get(fmt, rng.choice(["RGB", "RGBA", "L"]))
    im = Image.new(mode, size, rng.randint(0, 200))
    buf = io.BytesIO()
    extra: dict[str, Any] = {}
    if fmt == "WEBP":
        extra["lossless"] = rng.random() < 0.5
    if fmt in ("GIF", "PNG", "WEBP") and rng.random() < 0.3:
        extra.update(save_all=True, append_images=[im.rotate(90)])
    im.save(buf, format=fmt, **extra)
    return buf.getvalue()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(list(FILE_FORMATS)),
    seed=st.integers(0, 2**32 - 1),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "set-byte"]), st.integers(0, 10**6)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_images_decode_or_are_rejected_never_raise_otherwise(
    fmt: str, seed: int, edits: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    data = bytearray(_valid(fmt, rng))
    for op, at in edits:
        pos = at % max(1, len(data))
        if op == "flip" and data:
            data[pos] ^= 1 << (at % 8)
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif data:
            data[pos] = rng.choice([0, 0xFF, 0x7F, 0x80])
    try:
        out = decode_image(bytes(data), FILE_FORMATS, max_pixels=CAP, max_bytes=10**8)
    except ImageRejected:
        return
    assert out.image.mode == "RGB" and out.width * out.height <= CAP


# --- image_search with a bomb among the results ------------------------------------------------


def _serve(server: LoopServer, fake_ddgs: type[FakeDDGS], kind: str, seed: int) -> None:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(3):
        color = (40 + 60 * i, (seed * 37) % 255, 200 - 50 * i)
        rows.append({"image": server.add(f"/good{i}.png", "image/png", png(color, (80, 60)))})
        bomb = BOMBS[kind](rng) if i < 2 else COSTLY.get(kind, BOMBS[kind])(rng)
        rows.append({"image": server.add(f"/bomb{i}", MEDIA[kind], bomb)})
    rows.append({"image": server.add("/cut.png", "image/png", png((9, 9, 9), (90, 90))[:120])})
    rows.append({"image": server.add("/junk.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"x" * 40)})
    rng.shuffle(rows)
    fake_ddgs.image_results = {"q": rows}


@pytest.mark.parametrize("kind", sorted(BOMBS))
async def test_image_search_keeps_the_good_images_around_bombs(
    kind: str, tmp_path: Path, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    _serve(server, fake_ddgs, kind, seed=sorted(BOMBS).index(kind))
    settings = tool_settings(
        tmp_path,
        [server.host_port],
        cache_enabled=False,
        phash_max_distance=0,
        max_decoded_mb=64,  # a costly variant (hundreds of MB) is refused by its byte count
        image_candidates_factor=3,
    )
    kit = Toolkit(settings, ArtifactStore(tmp_path / "a"))
    try:
        obs = await kit.image_search("q", top_k=3, registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    hits = [h for h in obs.items if isinstance(h, ImageHit)]
    assert len(hits) == 3 and all(h.url.rsplit("/", 1)[-1].startswith("good") for h in hits)
    refused = [n for n in obs.notes if "/bomb" in n]
    assert refused, obs.notes
    assert kit.decode_budget.held == 0 and kit.decode_budget.peak <= 64_000_000


async def test_a_bomb_never_reaches_the_full_decoder(
    tmp_path: Path,
    fake_ddgs: type[FakeDDGS],
    server: LoopServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []
    real = toolkit_module.decode_image

    def spy(data: bytes, *args: Any, **kw: Any) -> Any:
        decoded.append(len(data))
        return real(data, *args, **kw)

    monkeypatch.setattr(toolkit_module, "decode_image", spy)
    rng = random.Random(7)
    bombs = [BOMBS[k](rng) for k in ("png", "gif", "webp-lossless", "jpeg", "webp-animated")]
    rows = [{"image": server.add(f"/b{i}", "image/png", b)} for i, b in enumerate(bombs)]
    rows.append({"image": server.add("/ok.png", "image/png", png((1, 200, 3)))})
    fake_ddgs.image_results = {"q": rows}
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
    )
    try:
        obs = await kit.image_search("q", top_k=2, registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok and len(obs.items) == 1
    assert decoded == [len(png((1, 200, 3)))]  # only the good image was decoded


def test_web_formats_are_a_subset_of_what_ingestion_reads() -> None:
    assert set(WEB_FORMATS) <= set(FILE_FORMATS)
