"""research: every query of every gap, concurrently, each under a timeout, within the run's tool
budget; then a second wave that reads the top result page of each gap. A failing tool becomes an
`Observation(ok=False)`, never an exception that ends the run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from agent.contracts import GapReport
from agent.offline import web_unavailable_notice
from agent.stage import Result, StageRun
from tools.observations import ImageRegistry, Observation, SearchHit, ToolName
from tools.registry import TOOLS, ToolSpec, get_tool

if TYPE_CHECKING:
    from tools.toolkit import Toolkit

ToolCall = tuple[ToolName, str, Callable[[], Awaitable[Observation]]]
"""One planned research call: tool, what it is about (for logs and notices), the call itself."""


async def run_tool(
    run: StageRun,
    tool: ToolName,
    query: str,
    fn: Callable[[], Awaitable[Observation]],
    timeout: float,
) -> Observation:
    """One tool call with its timeout, streamed to the caller and written to the trace."""
    t0 = time.perf_counter()
    try:
        obs = await asyncio.wait_for(fn(), timeout=timeout)
    except TimeoutError:
        obs = Observation.failure(tool, query, f"timed out after {timeout:.0f}s")
    obs.elapsed_s = obs.elapsed_s or round(time.perf_counter() - t0, 4)
    run.emit(
        {
            "tool": obs.tool,
            "query": query,
            "ok": obs.ok,
            "items": len(obs.items),
            "error": obs.error,
            "cached": obs.cached,
        }
    )
    run.record_tool({"tool": tool, "query": query, "observation": obs.model_dump(mode="json")})
    return obs


async def research(run: StageRun) -> Result:
    settings = run.settings
    state = run.state
    report = GapReport.model_validate(state.get("gaps") or {})
    toolkit = run.services.toolkit()
    registry = ImageRegistry.from_ids(state.get("image_ids") or {})
    budget = run.tool_budget
    timeout = settings.tools.timeout_s + 5.0
    has_kb = settings.retrieval.kb_dir.expanduser().exists()

    # Both waves go through the tool registry (tools/registry.py): each call is run by its
    # ToolSpec, counted against the one per-run budget and deduplicated by its `dedupe_key`.
    seen: set[str] = set()
    calls: list[ToolCall] = []
    for gap in report.gaps:
        # Every tool that plans calls for a gap, in the registry's order.
        for spec in TOOLS.values():
            if spec.plan is None or (spec.requires_kb and not has_kb):
                continue
            for args in spec.plan(gap):
                calls += _planned(spec, args, spec.label(args), seen, toolkit, registry)
    skipped = calls[max(budget, 0) :]
    calls = calls[: max(budget, 0)]
    semaphore = asyncio.Semaphore(settings.agent.research_concurrency)

    async def one(
        tool: ToolName, query: str, fn: Callable[[], Awaitable[Observation]]
    ) -> Observation:
        async with semaphore:
            return await run_tool(run, tool, query, fn, timeout)

    observations = list(await asyncio.gather(*(one(*c) for c in calls)))
    # Snippets are thin; read the top pages of each gap's searches for real facts. This
    # needs the search results, so it is a second concurrent wave within the same budget.
    browses = _browse_calls(
        toolkit, report, observations, settings.agent.browse_per_gap, seen, registry
    )
    room = max(budget - len(calls), 0)
    skipped += browses[room:]
    observations += await asyncio.gather(*(one(*c) for c in browses[:room]))
    notices = []
    if skipped:
        notices.append(
            f"research budget of {settings.agent.max_tool_calls} tool calls reached; "
            f"skipped {len(skipped)}: " + ", ".join(f"{t} '{q}'" for t, q, _ in skipped)
        )
    notices += web_unavailable_notice(observations)
    failed = [o for o in observations if not o.ok]
    summary = (
        f"{len(observations)} tool calls, {len(observations) - len(failed)} ok, "
        f"{len(failed)} failed"
    )
    return Result(
        {
            "observations": [o.model_dump(mode="json") for o in observations],
            "image_ids": registry.ids(),
            "tool_calls": state.get("tool_calls", 0) + len(observations),
            "notices": notices,
        },
        summary,
    )


async def _first(
    spec: ToolSpec[Any], toolkit: Toolkit, args: Any, registry: ImageRegistry
) -> Observation:
    """One planned call is one unit of work (a search with one query): its one observation."""
    result = await spec.run(toolkit, args, registry)
    if isinstance(result, list):
        return result[0] if result else Observation.failure(spec.name, spec.label(args), "none")
    return result


def _planned(
    spec: ToolSpec[Any],
    args: Any,
    label: str,
    seen: set[str],
    toolkit: Toolkit,
    registry: ImageRegistry,
) -> list[ToolCall]:
    """The call run by its registry spec, or nothing when its units already ran this turn
    (the tool's `dedupe_key`, as in the react loop): a repeat costs no budget."""
    keys = spec.dedupe_key(args)
    if keys and all(k in seen for k in keys):
        return []
    seen.update(keys)
    return [(spec.name, label, partial(_first, spec, toolkit, args, registry))]


def _browse_calls(
    toolkit: Toolkit,
    report: GapReport,
    observations: list[Observation],
    per_gap: int,
    seen: set[str],
    registry: ImageRegistry,
) -> list[ToolCall]:
    """The first `per_gap` result pages of each gap's text searches, each page read once, as
    calls of the registry's `browse` tool."""
    spec = get_tool("browse")
    by_query = {o.query: o for o in observations if o.tool == "search" and o.ok}
    urls: set[str] = set()
    calls: list[ToolCall] = []
    for gap in report.gaps:
        picked = 0
        hits = [
            item
            for q in gap.text_queries
            if q in by_query
            for item in by_query[q].items
            if isinstance(item, SearchHit) and item.url
        ]
        for hit in hits:
            if picked >= per_gap:
                break
            if hit.url in urls:
                continue
            urls.add(hit.url)
            args = spec.args.model_validate({"url": hit.url, "query": gap.span})
            planned = _planned(spec, args, gap.span, seen, toolkit, registry)
            picked += len(planned)
            calls += planned
    return calls
