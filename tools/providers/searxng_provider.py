"""Text and image search through a SearXNG instance's JSON API (`/search?format=json`).

The instance is chosen by the operator, so its own host:port is allowed even when it is on
loopback or an intranet; everything it links to still goes through the normal address policy.
JSON output must be enabled in the instance's settings.yml (`search.formats: [html, json]`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urljoin

import httpx

from tools.fetch import FetchError, SafeFetcher
from tools.observations import SearchHit
from tools.providers.base import ImageCandidate, ProviderError, as_int, first_str
from tools.settings import ToolSettings


class SearxngProvider:
    name = "searxng"

    def __init__(self, settings: ToolSettings) -> None:
        if not settings.searxng_url:
            raise ProviderError("provider 'searxng' needs tools.searxng_url")
        self.settings = settings
        try:
            base = httpx.URL(settings.searxng_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ProviderError(f"tools.searxng_url {settings.searxng_url!r}: {exc}") from exc
        if base.scheme not in ("http", "https") or not base.host:
            raise ProviderError(
                f"tools.searxng_url {settings.searxng_url!r} is not an http(s) URL with a host"
            )
        port = base.port or (443 if base.scheme == "https" else 80)
        host = f"[{base.host}]" if ":" in base.host else base.host
        self.endpoint = urljoin(settings.searxng_url.rstrip("/") + "/", "search")
        self.fetcher = SafeFetcher(settings, extra_allow=[f"{host}:{port}"])

    async def _query(self, query: str, category: str) -> list[dict[str, Any]]:
        try:
            res = await self.fetcher.fetch(
                self.endpoint,
                kind="json",
                params={"q": query, "format": "json", "categories": category, "pageno": "1"},
                headers={"Accept": "application/json"},
            )
        except FetchError as exc:
            hint = ""
            if exc.kind == "http" and "HTTP 403" in str(exc):
                hint = " (is 'json' in search.formats of the instance's settings.yml?)"
            raise ProviderError(
                f"searxng at {self.settings.searxng_url}: {exc}{hint}",
                retriable=exc.retriable,
                offline=exc.kind == "offline",
            ) from exc
        try:
            payload = json.loads(res.text())
        except (ValueError, RecursionError) as exc:  # bad JSON, or nested past the stack
            raise ProviderError(f"searxng returned invalid JSON: {exc}") from exc
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list):
            raise ProviderError("searxng JSON has no 'results' list")
        return [r for r in results if isinstance(r, dict)]

    async def text(self, query: str, max_results: int) -> list[SearchHit]:
        hits = []
        for row in await self._query(query, "general"):
            url = first_str(row, "url", "href", "link")
            if url:
                hits.append(
                    SearchHit(
                        title=first_str(row, "title"),
                        url=url,
                        snippet=first_str(row, "content", "snippet", "body"),
                    )
                )
        return hits[:max_results]

    async def images(self, query: str, max_results: int) -> list[ImageCandidate]:
        out = []
        for row in await self._query(query, "images"):
            image_url = first_str(row, "img_src", "image", "image_url")
            if not image_url:
                continue
            w = h = None
            fmt = first_str(row, "resolution", "img_format")
            if "x" in fmt.replace("×", "x"):
                a, _, b = fmt.replace("×", "x").replace(" ", "").partition("x")
                w, h = as_int(a), as_int(b)
            out.append(
                ImageCandidate(
                    image_url=image_url,
                    thumbnail_url=first_str(row, "thumbnail_src", "thumbnail"),
                    source_url=first_str(row, "url", "href"),
                    title=first_str(row, "title"),
                    width=w,
                    height=h,
                )
            )
        return out[:max_results]

    async def aclose(self) -> None:
        await self.fetcher.aclose()
