"""Text and image search through the `ddgs` metasearch package (no API key).

ddgs is synchronous, so each call runs in the toolkit's thread pool. `ddgs.DDGS` is looked up
at call time (tests replace it). Its results have renamed keys across versions
(`href`/`link`/`url`, `image`/`url`), so each field is read from any of its known names.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.observations import SearchHit
from tools.providers.base import ImageCandidate, ProviderError, as_int, first_str
from tools.settings import ToolSettings

_OFFLINE_HINTS = (
    "dns",
    "resolve",
    "name or service not known",
    "nodename nor servname",
    "network is unreachable",
    "no route to host",
    "temporary failure in name resolution",
)


def _classify(exc: Exception) -> ProviderError:
    import ddgs.exceptions as dx

    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "no results found" in low:
        return ProviderError("no results", retriable=False)
    if any(h in low for h in _OFFLINE_HINTS):
        return ProviderError(f"ddgs: network unavailable (offline?): {text[:300]}", offline=True)
    if isinstance(exc, dx.RatelimitException | dx.TimeoutException):
        return ProviderError(f"ddgs: {text[:300]}", retriable=True)
    return ProviderError(f"ddgs: {text[:300]}", retriable=True)


class DDGSProvider:
    name = "ddgs"

    def __init__(self, settings: ToolSettings, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self._executor = executor

    def _call(self, method: str, query: str, max_results: int) -> list[dict[str, Any]]:
        import ddgs
        import ddgs.exceptions as dx

        # Leave room under the tool's own deadline for a retry after a slow engine.
        client = ddgs.DDGS(timeout=max(1, int(min(10.0, self.settings.timeout_s / 2))))
        try:
            rows = getattr(client, method)(
                query,
                max_results=max_results,
                region=self.settings.region,
                safesearch=self.settings.safesearch,
            )
        except dx.DDGSException as exc:
            err = _classify(exc)
            if str(err) == "no results":
                return []
            raise err from exc
        return [r for r in rows or [] if isinstance(r, dict)]

    async def _run(self, method: str, query: str, max_results: int) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, method, query, max_results)

    async def text(self, query: str, max_results: int) -> list[SearchHit]:
        rows = await self._run("text", query, max_results)
        hits = []
        for row in rows:
            url = first_str(row, "href", "link", "url")
            if not url:
                continue
            hits.append(
                SearchHit(
                    title=first_str(row, "title"),
                    url=url,
                    snippet=first_str(row, "body", "snippet", "content", "description"),
                )
            )
        return hits[:max_results]

    async def images(self, query: str, max_results: int) -> list[ImageCandidate]:
        rows = await self._run("images", query, max_results)
        out = []
        for row in rows:
            image_url = first_str(row, "image", "img_src", "image_url", "src")
            source = first_str(row, "url", "href", "link", "source_url", "page")
            if not image_url:
                # very old/new shapes put the image itself under "url"
                image_url, source = first_str(row, "url"), first_str(row, "href", "link")
            if not image_url:
                continue
            out.append(
                ImageCandidate(
                    image_url=image_url,
                    thumbnail_url=first_str(row, "thumbnail", "thumbnail_src", "thumb"),
                    source_url=source if source != image_url else "",
                    title=first_str(row, "title"),
                    width=as_int(row.get("width")),
                    height=as_int(row.get("height")),
                )
            )
        return out[:max_results]

    async def aclose(self) -> None:
        return None
