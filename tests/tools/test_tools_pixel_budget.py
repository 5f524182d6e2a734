"""Decoded pixels held in memory are bounded per image_search call and toolkit-wide, however
many calls run at once (issue 9). Measured at the decode itself, not from the budget's own
bookkeeping."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tools.toolkit as toolkit_module
from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.images import DecodeBudget, DecodedImage, decode_image, probe_image
from tools.observations import ImageHit, ImageRegistry
from tools.toolkit import Toolkit

SIDE = (300, 200)  # 60k pixels per image
PIXELS = SIDE[0] * SIDE[1]
COST = PIXELS * 8  # an RGB PNG: 4 bytes stored + 4 for the RGB copy (core.images)
BUDGET_MB = 1  # 1,000,000 bytes: two such images at once, not three


class DecodeMeter:
    """Wraps the toolkit's decode: sums the decode cost (bytes) being decoded right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.kept_sides: list[int] = []

    def __call__(self, data: bytes, formats: Any, **kw: Any) -> DecodedImage:
        cost = probe_image(data, formats, max_pixels=kw["max_pixels"]).decoded_bytes
        with self.lock:
            self.now += cost
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(0.05)  # make overlapping decodes overlap for sure
            out = decode_image(data, formats, **kw)
        finally:
            with self.lock:
                self.now -= cost
        self.kept_sides.append(max(out.image.size))
        return out


@pytest.fixture
def meter(monkeypatch: pytest.MonkeyPatch) -> DecodeMeter:
    m = DecodeMeter()
    monkeypatch.setattr(toolkit_module, "decode_image", m)
    return m


def _serve(server: LoopServer, fake_ddgs: type[FakeDDGS], queries: list[str], n: int) -> None:
    fake_ddgs.image_results = {}
    for q in queries:
        rows = []
        for i in range(n):
            color = (hash((q, i)) % 200 + 20, (i * 37) % 255, (i * 91) % 255)
            rows.append({"image": server.add(f"/{q}-{i}.png", "image/png", png(color, SIDE))})
        fake_ddgs.image_results[q] = rows


def _kit(tmp_path: Path, server: LoopServer, **kw: Any) -> Toolkit:
    settings = tool_settings(
        tmp_path,
        [server.host_port],
        cache_enabled=False,
        max_decoded_mb=BUDGET_MB,
        work_image_px=64,
        thumbnail_px=16,
        phash_max_distance=0,
        **kw,
    )
    return Toolkit(settings, ArtifactStore(tmp_path / "a"))


async def test_one_call_holds_a_bounded_number_of_decoded_pixels(
    tmp_path: Path, fake_ddgs: type[FakeDDGS], server: LoopServer, meter: DecodeMeter
) -> None:
    _serve(server, fake_ddgs, ["q"], 8)
    kit = _kit(tmp_path, server)
    try:
        obs = await kit.image_search("q", top_k=8, registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    assert len(meter.kept_sides) == 8
    assert meter.peak <= 2 * COST, f"{meter.peak} decoded pixels at once"
    assert max(meter.kept_sides) <= 64, "only a reduced copy is kept after the decode"
    assert kit.decode_budget.held == 0
    hits = [h for h in obs.items if isinstance(h, ImageHit)]
    assert {(h.width, h.height) for h in hits} == {SIDE}  # the original's size is reported


async def test_concurrent_calls_share_one_bound(
    tmp_path: Path, fake_ddgs: type[FakeDDGS], server: LoopServer, meter: DecodeMeter
) -> None:
    queries = ["a", "b", "c", "d"]
    _serve(server, fake_ddgs, queries, 4)
    kit = _kit(tmp_path, server)
    registry = ImageRegistry()
    try:
        results = await asyncio.gather(
            *(kit.image_search(q, top_k=4, registry=registry) for q in queries)
        )
    finally:
        await kit.aclose()
    assert all(o.ok for o in results), [o.error for o in results]
    assert len(meter.kept_sides) == 16
    assert meter.peak <= 2 * COST, f"{meter.peak} decoded pixels at once across calls"
    assert kit.decode_budget.peak <= kit.decode_budget.capacity and kit.decode_budget.held == 0


async def test_a_bomb_is_refused_without_waiting_for_the_budget(
    tmp_path: Path, fake_ddgs: type[FakeDDGS], server: LoopServer, meter: DecodeMeter
) -> None:
    _serve(server, fake_ddgs, ["q"], 1)
    fake_ddgs.image_results["q"].insert(
        0, {"image": server.add("/big.png", "image/png", png((1, 2, 3), (400, 400)))}
    )
    kit = _kit(tmp_path, server, max_image_pixels=PIXELS)
    try:
        obs = await kit.image_search("q", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok and len(obs.items) == 1
    assert any("pixel cap" in n for n in obs.notes)
    assert len(meter.kept_sides) == 1  # the bomb never reached the decoder


async def test_budget_is_fifo_clamped_and_survives_cancellation() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []

    async def take(name: str, n: int, hold: float) -> None:
        got = await budget.acquire(n)
        order.append(name)
        assert budget.held <= budget.capacity
        await asyncio.sleep(hold)
        budget.release(got)

    first = await budget.acquire(60)
    waiters = [
        asyncio.create_task(take("big", 80, 0.01)),
        asyncio.create_task(take("small", 10, 0.01)),  # fits now, but waits its turn
        asyncio.create_task(take("huge", 10_000, 0.01)),  # clamped to the capacity
    ]
    doomed = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0.01)
    assert order == []
    budget.release(first)
    await asyncio.gather(*waiters)
    assert order == ["big", "small", "huge"]
    assert budget.held == 0 and budget.peak <= 100
