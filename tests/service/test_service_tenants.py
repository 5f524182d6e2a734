"""Two tenants on one server (issue 22.2): one feeds hostile pages to its research, the other's
research is unaffected.

One `groundwork serve` process shares its toolkit (HTTP client, extraction pool) between all
runs. Tenant A's searches lead to pathological pages (generated variants: 2 MB of repeated
`<!--`, of stray end tags, of deep nesting, of attribute soup), which used to hold every slot of
the shared 4-thread extraction pool past the tool timeout; tenant B's browse and image_search,
started while A's pages are being read, then timed out. The test asserts what B sees: every one
of its tool calls succeeds, and its run finishes with an image; A's run ends too.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agent.settings import Settings
from tests.service.conftest import ALICE, BOB, auth, read_sse, wait_status
from tests.service.fakes import LiveServer
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import png_bytes

pytestmark = pytest.mark.slow

PAGE_BYTES = 2_000_000


def hostile_pages(seed: int) -> list[bytes]:
    """One 2 MB page per class of pathological HTML, with seeded variation inside each."""
    rng = random.Random(seed)

    def fill(unit: Callable[[], str]) -> bytes:
        parts: list[str] = ["<html><body><p>"]
        size = 0
        while size < PAGE_BYTES:
            piece = unit()
            parts.append(piece)
            size += len(piece)
        return "".join(parts).encode()

    tags = ["a", "b", "p", "div", "span", "li", "td"]
    return [
        fill(lambda: "<!--" + " " * rng.randrange(3)),
        fill(lambda: f"</{rng.choice(tags)}>" + "x" * rng.randrange(2)),
        fill(lambda: f"<{rng.choice(tags)}>"),
        fill(lambda: f"<a {'x' * rng.randrange(1, 5)}='" + "y" * rng.randrange(5) + "' "),
    ]


NORMAL_PAGE = (
    b"<html><body><article><h1>The Zephyr Q7 lamp</h1><p>The Zephyr Q7 is a brass desk "
    b"lamp with a green glass shade, released in 2026.</p></article></body></html>"
)


class Web:
    """Loopback pages, images and a SearXNG-shaped /search: queries with "zork" (tenant A)
    lead to the hostile pages, any other query to the normal page and image."""

    def __init__(self, hostile: list[bytes]) -> None:
        self.hits: list[str] = []
        self.routes: dict[str, tuple[str, bytes]] = {
            "/normal.html": ("text/html", NORMAL_PAGE),
            "/lamp.png": ("image/png", png_bytes((40, 160, 60), (64, 64), seed=3)),
        }
        for i, page in enumerate(hostile):
            self.routes[f"/hostile-{i}.html"] = ("text/html", page)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/search":
                    body = json.dumps(outer.search(parse_qs(parts.query))).encode()
                    ctype = "application/json"
                elif parts.path in outer.routes:
                    ctype, body = outer.routes[parts.path]
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def search(self, query: dict[str, list[str]]) -> dict[str, Any]:
        q = (query.get("q") or [""])[0]
        images = "images" in (query.get("categories") or [""])[0]
        if "zork" in q.lower():
            n = int(q.rsplit(" ", 1)[-1]) if q.rsplit(" ", 1)[-1].isdigit() else 0
            page = f"{self.url}/hostile-{n % 4}.html"
            results = [{"url": page, "title": f"zork {n}", "content": "zork"}]
        elif images:
            results = [
                {
                    "img_src": f"{self.url}/lamp.png",
                    "url": f"{self.url}/normal.html",
                    "title": "Zephyr Q7 lamp",
                    "resolution": "64 x 64",
                }
            ]
        else:
            results = [{"url": f"{self.url}/normal.html", "title": "Zephyr Q7", "content": "lamp"}]
        return {"query": q, "results": results}

    def __enter__(self) -> Web:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def gap(span: str, text: list[str], images: list[str]) -> dict[str, Any]:
    return {
        "kind": "entity",
        "span": span,
        "why": "new",
        "text_queries": text,
        "image_queries": images,
        "needs_reference": bool(images),
    }


@pytest.fixture
def web() -> Iterator[Web]:
    with Web(hostile_pages(seed=22)) as server:
        yield server


def test_one_tenants_hostile_pages_leave_the_others_research_unaffected(
    start_server: Callable[..., LiveServer],
    gw_settings: Settings,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    web: Web,
) -> None:
    settings = gw_settings.merged(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline)},
            "tools": {
                "text_provider": "searxng",
                "image_provider": "searxng",
                "searxng_url": web.url,
                "allow_hosts": ["127.0.0.1"],
                "timeout_s": 8.0,
                "cache_enabled": False,
            },
            "agent": {"browse_per_gap": 1},
        }
    )
    hostile_gaps = [gap(f"zork {i}", [f"zork page {i}"], []) for i in range(8)]
    scripted_llm.add("GapReport", {"gaps": hostile_gaps[:4]}, {"gaps": hostile_gaps[4:]})
    scripted_llm.add("GapReport", {"gaps": [gap("Zephyr Q7", ["Zephyr Q7"], ["Zephyr Q7"])]})
    server = start_server(settings=settings, real=True, max_concurrent_runs=4)
    with (
        httpx.Client(base_url=server.url, headers=auth(ALICE), timeout=60) as alice,
        httpx.Client(base_url=server.url, headers=auth(BOB), timeout=60) as bob,
    ):
        hostile_runs = []
        for first in (0, 4):  # tenant A: two runs, eight hostile pages between them
            scripted_llm.arrived["GapReport"].clear()
            spans = ", ".join(f"zork {i}" for i in range(first, first + 4))
            r = alice.post("/v1/runs", json={"prompt": f"the towers {spans} at night"})
            assert r.status_code == 202, r.text
            hostile_runs.append(r.json()["id"])
            assert scripted_llm.arrived["GapReport"].wait(60)
        deadline = time.monotonic() + 60
        while sum(1 for h in web.hits if h.startswith("/hostile-")) < 4:
            if time.monotonic() > deadline:
                runs = [alice.get(f"/v1/runs/{h}").json() for h in hostile_runs]
                raise AssertionError(f"tenant A never fetched its pages: {web.hits} {runs}")
            time.sleep(0.05)

        r = bob.post("/v1/runs", json={"prompt": "a Zephyr Q7 lamp on a desk"})
        assert r.status_code == 202, r.text
        calm = r.json()["id"]
        run = wait_status(bob, calm, ("done", "failed"), timeout=180)
        assert run["status"] == "done", run["error"]
        with bob.stream("GET", f"/v1/runs/{calm}/events") as stream:
            events = read_sse(stream)
        for hostile in hostile_runs:  # A's runs end as well (done, or failed with a reason)
            ended = wait_status(alice, hostile, ("done", "failed"), timeout=180)
            assert ended["status"] == "done" or ended["error"]
    tools = [e["data"] for e in events if e["event"] == "tool"]
    assert {t["tool"] for t in tools} >= {"search", "image_search", "browse"}, tools
    assert all(t["ok"] for t in tools), [t for t in tools if not t["ok"]]
    assert run["references"], "tenant B's image search found no reference"
