"""The contract every search provider meets (the registry that picks one is
`tools.providers.PROVIDERS`; this module imports no provider, so none imports back).

Providers return plain normalized records (`SearchHit`, `ImageCandidate`) whatever keys their
upstream API uses this month; the toolkit downloads, checks and stores images itself, so a
provider never touches the artifact store or the IMG_### numbering.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel

from core.errors import GroundworkError
from tools.observations import SearchHit

ProviderName = Literal["ddgs", "searxng"]


class ProviderError(GroundworkError):
    """A provider call failed. `offline` = no network (never retried); `retriable` = worth
    another try after a backoff (rate limits, timeouts, 5xx)."""

    def __init__(self, message: str, *, retriable: bool = False, offline: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable and not offline
        self.offline = offline


class ImageCandidate(BaseModel):
    image_url: str
    thumbnail_url: str = ""
    source_url: str = ""
    title: str = ""
    width: int | None = None
    height: int | None = None


class SearchProvider(Protocol):
    name: str

    async def text(self, query: str, max_results: int) -> list[SearchHit]: ...

    async def images(self, query: str, max_results: int) -> list[ImageCandidate]: ...

    async def aclose(self) -> None: ...


def first_str(row: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among `keys`: upstream APIs rename fields between versions
    (ddgs: href/link/url; image: image/url/img_src)."""
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()) or None
    if isinstance(value, float) and value > 0:
        return int(value)
    return None
