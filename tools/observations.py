"""The one result contract every research tool returns, whatever provider is behind it.

Observations go into graph state and checkpoints, so they hold only text, URLs and artifact
hashes. Web text in them is untrusted data: it is shown to the LLM only inside delimited
observation blocks (see `tools.render`), never as instructions.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field

ToolName = str
"""A name in tools.registry.TOOLS (the one table of tools: a new tool is not listed here)."""
# What an observation reports: one of the tools, or "unknown" when a model called a tool that
# does not exist (`Toolkit.call` answers that with a failed observation, not an exception).
ObservedTool = str


class SearchHit(BaseModel):
    kind: Literal["web"] = "web"
    title: str = ""
    url: str = ""
    snippet: str = ""


class ImageHit(BaseModel):
    kind: Literal["image"] = "image"
    img_id: str = Field(description="IMG_### id, stable within one run (see ImageRegistry).")
    sha256: str = Field(description="Artifact-store hash of the downloaded, decoded image.")
    url: str = Field(default="", description="Where the image itself was downloaded from.")
    source_url: str = Field(default="", description="The page the image appears on.")
    title: str = ""
    width: int | None = None
    height: int | None = None
    score: float | None = Field(
        default=None, description="CLIP similarity to the query, if ranked."
    )
    thumbnail_sha256: str | None = None


class Passage(BaseModel):
    kind: Literal["passage"] = "passage"
    text: str
    source: str = Field(default="", description="URL or local path the passage came from.")
    score: float | None = None


ObservationItem = Annotated[SearchHit | ImageHit | Passage, Field(discriminator="kind")]


class Observation(BaseModel):
    tool: ObservedTool
    query: str
    ok: bool
    items: list[ObservationItem] = Field(default_factory=list)
    error: str | None = None
    cached: bool = Field(default=False, description="True when served from the tool cache.")
    elapsed_s: float = 0.0
    provider: str | None = Field(
        default=None, description="Which backend answered (ddgs, searxng, web, local)."
    )
    notes: list[str] = Field(
        default_factory=list,
        description="Non-fatal problems (skipped downloads, ranking unavailable), for the dossier.",
    )

    @classmethod
    def failure(
        cls, tool: ObservedTool, query: str, error: str, elapsed_s: float = 0.0
    ) -> Observation:
        return cls(tool=tool, query=query, ok=False, error=error, elapsed_s=elapsed_s)


class ImageRegistry:
    """Hands out IMG_### ids that stay stable within one run, in CALL order.

    The same image (by sha256) found by two queries keeps its first id. Concurrent tool calls
    finish in any order (downloads, cache reads), so ids are not assigned when a call finishes
    but in the order the calls were made: a call takes a ticket when it starts (`reserve`, no
    await before it), waits for its turn (`wait_turn`) once its images are known, assigns them
    in rank order, and hands the turn on (`release`, always, even when it failed or was
    cancelled). A replayed run therefore gets the recorded ids whatever the timing. The graph
    rebuilds the registry from state on resume (`from_ids`) so numbering continues where it
    stopped.
    """

    def __init__(self) -> None:
        self._by_sha: dict[str, str] = {}
        self._next_ticket = 0
        self._turn = 0
        self._released: set[int] = set()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    @classmethod
    def from_ids(cls, ids: dict[str, str]) -> ImageRegistry:
        """`ids` maps IMG_### -> sha256, as kept in graph state."""
        reg = cls()
        for img_id, sha in sorted(ids.items()):
            reg._by_sha[sha] = img_id
        return reg

    def assign(self, sha256: str) -> str:
        if sha256 not in self._by_sha:
            self._by_sha[sha256] = f"IMG_{len(self._by_sha) + 1:03d}"
        return self._by_sha[sha256]

    def ids(self) -> dict[str, str]:
        return {img_id: sha for sha, img_id in self._by_sha.items()}

    # --- call-order assignment -------------------------------------------------------------

    def reserve(self) -> int:
        """A place in line for one tool call; take it before the call's first await."""
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    async def wait_turn(self, ticket: int) -> None:
        """Until every earlier ticket has been released. Earlier calls end within their own
        timeout, so this wait is bounded by theirs."""
        if ticket <= self._turn:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = fut
        try:
            await fut
        finally:
            self._waiters.pop(ticket, None)

    def release(self, ticket: int) -> None:
        """This call is done assigning (or failed): the next ticket's turn may come."""
        self._released.add(ticket)
        while self._turn in self._released:
            self._released.discard(self._turn)
            self._turn += 1
        waiter = self._waiters.get(self._turn)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
