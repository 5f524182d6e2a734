"""Issue 18 (tools side): IMG ids follow call order and rank, never download or cache timing;
the public hooks for replay (`provider_factory`, `fetcher`, `replay=True`) answer only from
what was recorded and fail loudly on a miss. Issue 21.10: offline is stated once, in one line.
"""

from __future__ import annotations

import asyncio
import random
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from ddgs import exceptions as dx

from core.artifacts import ArtifactStore
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.cache import make_cache
from tools.fetch import FetchError, FetchResult
from tools.observations import ImageHit, ImageRegistry, SearchHit
from tools.providers import ImageCandidate
from tools.toolkit import ReplayMiss, Toolkit


def _slow_png(server: LoopServer, path: str, color: tuple[int, int, int], delay: float) -> str:
    body = png(color, (60, 40))

    def handler(h: BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return server.custom(path, handler)


@pytest.mark.parametrize("seed", range(4))
async def test_ids_follow_call_order_and_rank_not_download_timing(
    seed: int, tmp_path: Path, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    rng = random.Random(seed)
    queries = ["q0", "q1", "q2"]
    expected: list[str] = []
    fake_ddgs.image_results = {}
    for qi, q in enumerate(queries):
        rows = []
        for i in range(2):
            color = (30 + 90 * qi, 40 + 150 * i, rng.randrange(256))
            # Earlier calls download more slowly, so they finish last.
            url = _slow_png(server, f"/{q}-{i}.png", color, 0.05 * (len(queries) - qi))
            rows.append({"image": url})
            expected.append(url)
        fake_ddgs.image_results[q] = rows
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False, phash_max_distance=0),
        ArtifactStore(tmp_path / "a"),
    )
    registry = ImageRegistry()
    try:
        results = await asyncio.gather(
            *(kit.image_search(q, top_k=2, registry=registry) for q in queries)
        )
    finally:
        await kit.aclose()
    hits = [h for obs in results for h in obs.items if isinstance(h, ImageHit)]
    assert [h.url for h in hits] == expected  # provider rank within each call
    assert [h.img_id for h in hits] == [f"IMG_{n:03d}" for n in range(1, 7)]


async def test_a_failed_or_cancelled_call_hands_its_turn_on() -> None:
    registry = ImageRegistry()
    first, second, third = registry.reserve(), registry.reserve(), registry.reserve()
    waiting = asyncio.ensure_future(registry.wait_turn(third))
    blocked = asyncio.ensure_future(registry.wait_turn(second))
    await asyncio.sleep(0)
    blocked.cancel()
    registry.release(second)  # cancelled: its finally releases
    await asyncio.sleep(0)
    assert not waiting.done()  # the first is still running
    registry.release(first)  # failed: released without assigning
    await asyncio.wait_for(waiting, 1)
    assert registry.assign("c" * 64) == "IMG_001"


class StubProvider:
    """A recorded provider: answers from a table and counts calls."""

    def __init__(self, name: str, images: dict[str, list[ImageCandidate]]) -> None:
        self.name = name
        self.images_table = images
        self.calls: list[str] = []

    async def text(self, query: str, max_results: int) -> list[SearchHit]:
        self.calls.append(query)
        return [SearchHit(title=f"hit for {query}", url="https://example.org/x", snippet="s")]

    async def images(self, query: str, max_results: int) -> list[ImageCandidate]:
        self.calls.append(query)
        return list(self.images_table.get(query, []))

    async def aclose(self) -> None:
        return None


class StubFetcher:
    """Serves recorded bytes by URL, refuses the rest (as a replay fetcher would)."""

    def __init__(self, table: dict[str, bytes]) -> None:
        self.table = table
        self.urls: list[str] = []

    async def fetch(self, url: str, **_: Any) -> FetchResult:
        self.urls.append(url)
        if url not in self.table:
            raise FetchError("offline", f"{url} was not recorded")
        return FetchResult(url, url, 200, "image/png", self.table[url])

    async def aclose(self) -> None:
        return None


async def test_public_hooks_record_then_replay_with_the_same_ids(tmp_path: Path) -> None:
    urls = {f"https://img.example/{i}.png": png((20 * i, 200 - 30 * i, 90)) for i in range(4)}
    table = {"red kite": [ImageCandidate(image_url=u) for u in urls]}
    settings = tool_settings(tmp_path, [], phash_max_distance=0, cache_dir=tmp_path / "snap")
    store = ArtifactStore(tmp_path / "a")
    providers: list[StubProvider] = []

    def factory(name: str) -> StubProvider:
        providers.append(StubProvider(name, table))
        return providers[-1]

    recorder = Toolkit(settings, store, provider_factory=factory, fetcher=StubFetcher(urls))
    try:
        recorded = await recorder.image_search("red kite", top_k=3, registry=ImageRegistry())
        (text,) = await recorder.search(["red kite"])
    finally:
        await recorder.aclose()
    assert recorded.ok and text.ok and providers[0].name == "ddgs"

    refusing = StubFetcher({})
    replayer = Toolkit(
        settings,
        store,
        cache=make_cache(settings),
        provider_factory=lambda name: StubProvider(name, {}),
        fetcher=refusing,
        replay=True,
    )
    try:
        again = await replayer.image_search("red kite", top_k=3, registry=ImageRegistry())
        (text_again,) = await replayer.search(["red kite"])
        with pytest.raises(ReplayMiss, match="not recorded"):
            await replayer.image_search("osprey", top_k=3, registry=ImageRegistry())
        with pytest.raises(ReplayMiss):
            await replayer.browse("https://example.org/never", "q")
    finally:
        await replayer.aclose()
    assert again.cached and text_again.cached
    assert [(h.img_id, h.sha256) for h in again.items if isinstance(h, ImageHit)] == [
        (h.img_id, h.sha256) for h in recorded.items if isinstance(h, ImageHit)
    ]
    assert refusing.urls == []  # nothing was fetched on replay


def test_replay_needs_a_cache(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache"):
        Toolkit(tool_settings(tmp_path, []), ArtifactStore(tmp_path / "a"), replay=True)


async def test_offline_is_stated_once_and_later_calls_fail_fast(
    tmp_path: Path, fake_ddgs: type[FakeDDGS]
) -> None:
    fake_ddgs.fail = [
        dx.DDGSException(
            "DNSError: error sending request\n > error resolving DNS\n > no records found"
        )
    ] * 10
    kit = Toolkit(tool_settings(tmp_path, [], cache_enabled=False), ArtifactStore(tmp_path / "a"))
    try:
        first = await kit.search(["a"])
        later = [
            *await kit.search(["b", "c"]),
            await kit.image_search("d", registry=ImageRegistry()),
        ]
    finally:
        await kit.aclose()
    errors = [o.error or "" for o in [*first, *later]]
    assert all("\n" not in e and "offline" in e for e in errors)
    assert "unreachable" in errors[0] and "DNS" in errors[0]
    assert all("see the first offline error" in e for e in errors[1:])
    assert len(fake_ddgs.calls) == 1  # later calls did not stall on DNS again
