"""Research tool configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


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
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts/CIDRs that may be fetched even though private or loopback "
        "(tests, intranets). Empty = public internet only.",
    )
