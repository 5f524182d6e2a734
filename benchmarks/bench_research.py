"""Research-stage concurrency and cache speed-up: `python -m benchmarks.run research [--quick]`.

N image queries x M images each, served by a loopback HTTP server that sleeps `--latency`
seconds before every answer; the search provider (ddgs, faked at its boundary) sleeps
`--search-latency`. Everything between them is the real Toolkit: safe fetcher, full decode,
perceptual de-dup, artifact store, cache. Reported:
- wall time of the whole research stage (all queries at once) vs the sum of the individual
  calls (each query's own time, and every single search/download) = the concurrency ratio;
- the same stage again with the cache warm: cache-hit speed-up;
- the most full-resolution decoded pixels held at once across all concurrent calls, against
  the toolkit-wide budget (`--image-px` sets the served images' size, `--pixel-budget` the
  budget in megapixels): the memory bound holds under the stage's concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _image(seed: int, side: int = 96) -> bytes:
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    w, h = side, max(8, side * 3 // 4)
    im = Image.new("RGB", (w, h), tuple(rnd.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rnd.randrange(max(1, w - 16)), rnd.randrange(max(1, h - 12))
        draw.rectangle(
            (x0, y0, x0 + rnd.randrange(8, 40), y0 + rnd.randrange(8, 30)),
            fill=tuple(rnd.randrange(256) for _ in range(3)),
        )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _serve(images: dict[str, bytes], latency: float) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency)
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog of 5 turns a burst into SYN retries
        daemon_threads = True

    server = Server(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _stage(kit: Any, queries: list[str], registry: Any) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    obs = await asyncio.gather(*(kit.image_search(q, registry=registry) for q in queries))
    return time.perf_counter() - t0, list(obs)


async def _bench(
    n_queries: int,
    n_images: int,
    latency: float,
    search_latency: float,
    side: int = 96,
    budget_mp: float = 120.0,
) -> None:
    import ddgs

    from core.artifacts import ArtifactStore
    from tools.observations import ImageRegistry
    from tools.settings import ToolSettings
    from tools.toolkit import Toolkit

    queries = [f"query {i}" for i in range(n_queries)]
    images = {
        f"/q{q}/{i}.png": _image(q * 1000 + i, side)
        for q in range(n_queries)
        for i in range(n_images)
    }
    server = _serve(images, latency)
    port = server.server_address[1]
    search_times: list[float] = []

    class LatentDDGS:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def images(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
            t0 = time.perf_counter()
            time.sleep(search_latency)
            q = int(query.split()[-1])
            rows = [
                {"image": f"http://127.0.0.1:{port}/q{q}/{i}.png", "title": f"{q}/{i}"}
                for i in range(n_images)
            ]
            search_times.append(time.perf_counter() - t0)
            return rows

        def text(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
            return []

    saved = ddgs.DDGS
    ddgs.DDGS = LatentDDGS  # type: ignore[misc,assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = ToolSettings(
                allow_hosts=[f"127.0.0.1:{port}"],
                cache_dir=Path(tmp) / "cache",
                max_images_per_query=n_images,
                image_candidates_factor=1,
                per_host_concurrency=n_images * n_queries,
                download_concurrency=64,
                timeout_s=120,
                fetch_timeout_s=60,
                max_decoded_mb=max(1, int(budget_mp * 8)),  # ~8 bytes per RGB pixel
            )
            kit = Toolkit(settings, ArtifactStore(Path(tmp) / "artifacts"))
            fetch_times: list[float] = []
            original = kit.fetcher.fetch

            async def timed_fetch(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    fetch_times.append(time.perf_counter() - t0)

            kit.fetcher.fetch = timed_fetch  # type: ignore[method-assign]
            try:
                cold_wall, cold = await _stage(kit, queries, ImageRegistry())
                warm_wall, warm = await _stage(kit, queries, ImageRegistry())
            finally:
                await kit.aclose()
    finally:
        ddgs.DDGS = saved  # type: ignore[misc]
        server.shutdown()
        server.server_close()

    peak, capacity = kit.decode_budget.peak // 8, kit.decode_budget.capacity // 8
    kept = sum(len(o.items) for o in cold)
    failed = [o.error for o in cold if not o.ok]
    per_call = sum(o.elapsed_s for o in cold)
    singles = sum(search_times) + sum(fetch_times)
    print(
        f"setup: {n_queries} queries x {n_images} images, {latency * 1000:.0f} ms per download, "
        f"{search_latency * 1000:.0f} ms per search (loopback, real HTTP)"
    )
    print(f"images kept: {kept}/{n_queries * n_images}; failed calls: {len(failed)} {failed[:1]}")
    print(f"research stage wall time (cold):     {cold_wall:8.3f} s")
    print(
        f"sum of the {n_queries} image_search calls:   {per_call:8.3f} s  "
        f"-> concurrency ratio {per_call / cold_wall:5.1f}x"
    )
    print(
        f"sum of {len(search_times)} searches + {len(fetch_times)} downloads: {singles:8.3f} s  "
        f"-> concurrency ratio {singles / cold_wall:5.1f}x"
    )
    print(
        f"repeat run, cache warm:              {warm_wall:8.3f} s  "
        f"({sum(o.cached for o in warm)}/{len(warm)} cached) "
        f"-> cache speed-up {cold_wall / max(warm_wall, 1e-6):7.1f}x"
    )
    print(
        f"decoded pixels held at once (peak):  {peak / 1e6:8.3f} MP of a {capacity / 1e6:.3f} MP "
        f"budget ({side}x{max(8, side * 3 // 4)} images, {n_queries * n_images} decodes)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 queries x 4 images")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per download")
    parser.add_argument("--search-latency", type=float, default=0.3, help="seconds per search")
    parser.add_argument("--image-px", type=int, default=96, help="width of the served images")
    parser.add_argument(
        "--pixel-budget", type=float, default=120.0, help="decoded-pixel budget, megapixels"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.images, args.latency = 3, 4, 0.1
    asyncio.run(
        _bench(
            args.queries,
            args.images,
            args.latency,
            args.search_latency,
            args.image_px,
            args.pixel_budget,
        )
    )


if __name__ == "__main__":
    main()
