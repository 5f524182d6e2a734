"""Research tool configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, Field, field_validator

from tools.netguard import parse_allow_entry


class ToolSettings(BaseModel):
    text_provider: Literal["ddgs", "searxng", "none"] = Field(
        default="ddgs", description="Web text search provider; none = offline."
    )
    image_provider: Literal["ddgs", "searxng", "none"] = Field(
        default="ddgs", description="Web image search provider; none = offline."
    )
    searxng_url: str | None = Field(default=None, description="Base URL of a SearXNG instance.")
    timeout_s: float = Field(default=20.0, gt=0, description="Wall-clock cap for one tool call.")
    top_k: int = Field(default=5, ge=1, le=50, description="Results per query.")
    max_images_per_query: int = Field(default=4, ge=0, le=50, description="Images kept per query.")
    max_image_bytes: int = Field(default=15_000_000, gt=0, description="Per-download byte cap.")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="Decompression-bomb cap.")
    max_decoded_mb: int = Field(
        default=768,
        gt=0,
        description="Memory (MB) that ALL image decodes of a toolkit may hold at once "
        "(concurrent image searches share it), counted per format from each header before "
        "decoding (WebP ~20 bytes per pixel, PNG/JPEG 5-8, see core.images); an image "
        "that alone would need more is refused, not decoded.",
    )
    work_image_px: int = Field(
        default=512,
        ge=64,
        le=4096,
        description="Longest side of the copy kept after the full decode (ranking, duplicate "
        "detection, thumbnails); the original bytes are what is stored.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts/CIDRs that may be fetched even though private or loopback "
        "(tests, intranets). Entries: 'host', 'host:port', '[v6]:port', 'CIDR' or "
        "'CIDR:port' (e.g. '127.0.0.1:8080', '10.0.0.0/8'). Empty = public internet only. "
        "Cloud-metadata addresses stay refused unless named exactly.",
    )
    # --- safe fetching -------------------------------------------------------------------
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for the next bytes of a response."
    )
    fetch_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Total wall-clock cap for one download, redirects and body included "
        "(stops slow-drip servers that keep each read under read_timeout_s).",
    )
    max_redirects: int = Field(default=5, ge=0, le=20, description="Redirect hops per fetch.")
    max_page_bytes: int = Field(default=3_000_000, gt=0, description="Per-page byte cap (browse).")
    per_host_concurrency: int = Field(
        default=4, ge=1, le=64, description="Simultaneous downloads from one host."
    )
    download_concurrency: int = Field(
        default=16, ge=1, le=256, description="Simultaneous downloads in total."
    )
    user_agent: str = Field(
        default="Mozilla/5.0 (compatible; Groundwork/0.1; +research-tools)",
        description="User-Agent sent with every download.",
    )
    # --- providers -------------------------------------------------------------------------
    retry_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per provider call (first try included)."
    )
    retry_base_s: float = Field(
        default=0.5, ge=0, description="Backoff base; sleeps are uniform(0, base*2**n) (jitter)."
    )
    retry_max_s: float = Field(default=4.0, ge=0, description="Cap on one backoff sleep.")
    region: str = Field(default="us-en", description="Search region passed to the provider.")
    safesearch: Literal["on", "moderate", "off"] = Field(default="moderate")
    # --- images ------------------------------------------------------------------------------
    image_candidates_factor: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Image results requested per kept image (downloads fail, duplicates collapse).",
    )
    phash_max_distance: int = Field(
        default=6, ge=0, le=64, description="Hamming distance (of 64-bit dHashes) = duplicate."
    )
    thumbnail_px: int = Field(default=256, ge=16, le=2048, description="Thumbnail longest side.")
    # --- browse ----------------------------------------------------------------------------
    passage_chars: int = Field(
        default=700, ge=100, le=5000, description="Target size of one browse passage."
    )
    extract_timeout_s: float = Field(
        default=8.0,
        gt=0,
        description="Longest one page may take to read (extract, chunk, rank) in its worker "
        "process; the worker is killed past it, so the work really stops.",
    )
    extract_workers: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Page-reading worker processes, shared by every toolkit of the process; "
        "one run holds at most half of them at once (fairness between runs).",
    )
    extract_memory_mb: int = Field(
        default=2048, ge=256, description="Address-space cap of one page-reading worker."
    )
    extract_max_elements: int = Field(
        default=25_000,
        ge=100,
        description="HTML elements of a page that are read (document order); the rest is cut "
        "before extraction, which costs ~40 us per element.",
    )
    extract_max_text_chars: int = Field(
        default=400_000, ge=1_000, description="Extracted text chunked and ranked per page."
    )
    # --- caching ---------------------------------------------------------------------------
    cache_enabled: bool = Field(default=True, description="Cache tool results.")
    cache_dir: Path = Field(
        default=Path(".groundwork/cache/tools"), description="Disk cache folder (no Redis)."
    )
    cache_ttl_s: int = Field(default=86_400, ge=1, description="Cached results expire after this.")
    cache_redis_url: str | None = Field(
        default=None, description="redis://... to cache in Redis (shared by processes)."
    )

    @field_validator("allow_hosts")
    @classmethod
    def _allow_entries_parse(cls, value: list[str]) -> list[str]:
        """A typo here would silently open nothing (or the wrong thing): refuse it at load."""
        for entry in value:
            parse_allow_entry(entry)  # AllowListError (a ValueError) names the entry
        return value

    @field_validator("searxng_url")
    @classmethod
    def _searxng_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"searxng_url {value!r} is not a URL ({exc})") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"searxng_url {value!r} must be an http(s) URL with a host, "
                "e.g. http://localhost:8888"
            )
        return value
