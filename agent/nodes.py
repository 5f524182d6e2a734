"""Node logic of the planned policy: intake -> analyze -> research -> synthesize -> generate ->
critique -> (edit -> critique)* -> finish, plus `refine` for chat messages that change the last
image. Each node takes `(state, runtime)` and returns a typed `Command` naming where to go, so
the routing is visible in the signature and every loop is bounded by counters in state.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from agent import prompts
from agent.errors import InputError
from agent.llm import image_data_url
from agent.models import GapReport, GroundedPrompt, Intent, Verdict
from agent.services import Services
from agent.settings import RunContext, Settings
from agent.state import CritiqueRound, RunState, StageEvent
from generators.base import GenerationRequest, GenerationResult, GeneratorError
from tools.observations import ImageHit, ImageRegistry, Observation, SearchHit, ToolName
from tools.render import render_observations

if TYPE_CHECKING:
    from tools.toolkit import Toolkit

ToolCall = tuple[ToolName, str, Callable[[], Awaitable[Observation]]]
"""One planned research call: tool, what it is about (for logs and notices), the call itself."""


def validate_prompt(text: str | None, max_chars: int) -> str:
    """The one check of user prompts, shared by the CLI (before anything starts) and the graph."""
    prompt = (text or "").strip()
    if not prompt:
        raise InputError("the prompt is empty; say what image you want")
    if len(prompt) > max_chars:
        raise InputError(
            f"the prompt is {len(prompt)} characters; the limit is {max_chars} "
            "(GROUNDWORK_AGENT__PROMPT_MAX_CHARS)"
        )
    return prompt


def _event(stage: str, state: RunState, started: float, summary: str) -> list[StageEvent]:
    return [
        StageEvent(
            stage=stage,
            turn=state.get("turn", 1),
            elapsed_s=round(time.perf_counter() - started, 4),
            summary=summary,
        )
    ]


class PlannedNodes:
    """Binds the node functions to the run's services (LLMs, tools, generator, store)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def settings(self, runtime: Runtime[RunContext]) -> Settings:
        ctx = runtime.context
        return ctx.apply(self.services.settings) if ctx is not None else self.services.settings

    # -- intake -------------------------------------------------------------------------------
    async def intake(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["analyze", "refine"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        message = validate_prompt(state.get("request"), settings.agent.prompt_max_chars)
        turn = state.get("turn", 0) + 1
        reset: dict[str, Any] = {
            "turn": turn,
            "rounds": [],
            "round": 0,
            "tool_calls": 0,
            "error": None,
        }
        previous = state.get("grounded")
        if state.get("image") is None or previous is None:
            intent = Intent(kind="new")
        else:
            intent = await self.services.structured(
                "intake",
                Intent,
                [
                    SystemMessage(prompts.INTAKE_SYSTEM),
                    HumanMessage(
                        prompts.INTAKE_USER.format(prompt=state.get("prompt", ""), message=message)
                    ),
                ],
                settings,
            )
        summary = f"turn {turn}: {intent.kind}"
        if intent.kind == "refine":
            instruction = intent.instruction.strip() or message
            update = {
                **reset,
                "intent": "refine",
                "prompt": f"{state.get('prompt', '')}; {instruction}",
                "edit_instruction": instruction,
            }
            event = _event("intake", {**state, "turn": turn}, started, summary)
            return Command(goto="refine", update={**update, "stages": event})
        update = {
            **reset,
            "intent": "new",
            "prompt": message,
            "gaps": None,
            "observations": [],
            "grounded": None,
            "image": None,
            "edit_instruction": None,
        }
        event = _event("intake", {**state, "turn": turn}, started, summary)
        return Command(goto="analyze", update={**update, "stages": event})

    # -- analyze ------------------------------------------------------------------------------
    async def analyze(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["research", "synthesize"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        report = await self.services.structured(
            "analyze",
            GapReport,
            [
                SystemMessage(prompts.ANALYZE_SYSTEM.format(max_gaps=settings.agent.max_gaps)),
                HumanMessage(prompts.ANALYZE_USER.format(prompt=state["prompt"])),
            ],
            settings,
        )
        report.gaps = report.gaps[: settings.agent.max_gaps]
        spans = ", ".join(g.span for g in report.gaps) or "none"
        goto: Literal["research", "synthesize"] = "research" if report.gaps else "synthesize"
        return Command(
            goto=goto,
            update={
                "gaps": report.model_dump(mode="json"),
                "stages": _event("analyze", state, started, f"{len(report.gaps)} gaps: {spans}"),
            },
        )

    # -- research -----------------------------------------------------------------------------
    async def research(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["synthesize"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        report = GapReport.model_validate(state.get("gaps") or {})
        toolkit = self.services.toolkit()
        registry = ImageRegistry.from_ids(state.get("image_ids") or {})
        budget = settings.agent.max_tool_calls - state.get("tool_calls", 0)
        timeout = settings.tools.timeout_s + 5.0

        calls: list[ToolCall] = []
        for gap in report.gaps:
            for q in gap.text_queries:
                calls.append(("search", q, partial(_search_one, toolkit, q)))
            for q in gap.image_queries:
                calls.append(
                    ("image_search", q, partial(toolkit.image_search, q, registry=registry))
                )
            if settings.retrieval.kb_dir.exists():
                calls.append(
                    ("knowledge_base", gap.span, partial(toolkit.knowledge_base, gap.span))
                )
        skipped = calls[max(budget, 0) :]
        calls = calls[: max(budget, 0)]

        writer = runtime.stream_writer
        semaphore = asyncio.Semaphore(settings.agent.research_concurrency)

        async def run_one(
            tool: ToolName, query: str, fn: Callable[[], Awaitable[Observation]]
        ) -> Observation:
            async with semaphore:
                t0 = time.perf_counter()
                try:
                    obs = await asyncio.wait_for(fn(), timeout=timeout)
                except TimeoutError:
                    obs = Observation.failure(tool, query, f"timed out after {timeout:.0f}s")
                obs.elapsed_s = obs.elapsed_s or round(time.perf_counter() - t0, 4)
                writer(
                    {
                        "tool": obs.tool,
                        "query": query,
                        "ok": obs.ok,
                        "items": len(obs.items),
                        "error": obs.error,
                        "cached": obs.cached,
                    }
                )
                return obs

        observations = list(await asyncio.gather(*(run_one(*c) for c in calls)))
        # Snippets are thin; read the top pages of each gap's searches for real facts. This
        # needs the search results, so it is a second concurrent wave within the same budget.
        browses = _browse_calls(toolkit, report, observations, settings.agent.browse_per_gap)
        room = max(budget - len(calls), 0)
        skipped += browses[room:]
        observations += await asyncio.gather(*(run_one(*c) for c in browses[:room]))
        notices = []
        if skipped:
            notices.append(
                f"research budget of {settings.agent.max_tool_calls} tool calls reached; "
                f"skipped {len(skipped)}: " + ", ".join(f"{t} '{q}'" for t, q, _ in skipped)
            )
        failed = [o for o in observations if not o.ok]
        ok_count = len(observations) - len(failed)
        summary = f"{len(observations)} tool calls, {ok_count} ok, {len(failed)} failed"
        return Command(
            goto="synthesize",
            update={
                "observations": [o.model_dump(mode="json") for o in observations],
                "image_ids": registry.ids(),
                "tool_calls": state.get("tool_calls", 0) + len(observations),
                "notices": notices,
                "stages": _event("research", state, started, summary),
            },
        )

    # -- synthesize ---------------------------------------------------------------------------
    async def synthesize(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["generate"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        report = GapReport.model_validate(state.get("gaps") or {})
        observations = [Observation.model_validate(o) for o in state.get("observations", [])]
        found = [o for o in observations if o.ok and o.items]
        notices: list[str] = []
        if not report.gaps:
            grounded = GroundedPrompt(gen_prompt=state["prompt"])
            summary = "no gaps: prompt used as is"
        elif not found:
            # With no evidence a rewrite can only invent; the user's words are the best prompt.
            grounded = GroundedPrompt(gen_prompt=state["prompt"])
            summary = "research found nothing: prompt used as is"
            notices.append(
                "research found nothing to ground the prompt on (every tool call failed or came "
                "back empty), so the prompt was used as written"
            )
        else:
            images = _image_lines(observations)
            grounded = await self.services.structured(
                "synthesize",
                GroundedPrompt,
                [
                    SystemMessage(
                        prompts.SYNTHESIZE_SYSTEM.format(max_refs=settings.agent.max_references)
                    ),
                    HumanMessage(
                        prompts.SYNTHESIZE_USER.format(
                            prompt=state["prompt"],
                            gaps="\n".join(f"- {g.kind}: {g.span} ({g.why})" for g in report.gaps),
                            images="\n".join(images) or "(none)",
                            observations=render_observations(
                                observations, settings.agent.observation_chars
                            ),
                        )
                    ),
                ],
                settings,
            )
            grounded, dropped = _check_references(
                grounded, state.get("image_ids") or {}, settings.agent.max_references
            )
            notices += dropped
            summary = (
                f"{len(grounded.facts)} facts, {len(grounded.reference_images)} references: "
                f"{grounded.gen_prompt[:80]}"
            )
        return Command(
            goto="generate",
            update={
                "grounded": grounded.model_dump(mode="json"),
                "notices": notices,
                "stages": _event("synthesize", state, started, summary),
            },
        )

    # -- refine (chat) ------------------------------------------------------------------------
    async def refine(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["generate"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        previous = GroundedPrompt.model_validate(state.get("grounded") or {})
        instruction = state.get("edit_instruction") or ""
        grounded = await self.services.structured(
            "synthesize",
            GroundedPrompt,
            [
                SystemMessage(prompts.REFINE_SYSTEM),
                HumanMessage(
                    prompts.REFINE_USER.format(
                        gen_prompt=previous.gen_prompt,
                        facts=json.dumps([f.claim for f in previous.facts]),
                        refs=", ".join(r.img_id for r in previous.reference_images) or "none",
                        instruction=instruction,
                    )
                ),
            ],
            settings,
        )
        grounded, notices = _check_references(
            grounded, state.get("image_ids") or {}, settings.agent.max_references
        )
        return Command(
            goto="generate",
            update={
                "grounded": grounded.model_dump(mode="json"),
                "notices": notices,
                "stages": _event("refine", state, started, grounded.gen_prompt[:80]),
            },
        )

    # -- generate -----------------------------------------------------------------------------
    async def generate(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["critique", "finish"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        g = settings.generator
        grounded = GroundedPrompt.model_validate(state["grounded"])
        ids = state.get("image_ids") or {}
        previous = state.get("image")
        instruction = state.get("edit_instruction")
        prompt = grounded.gen_prompt
        request = GenerationRequest(
            prompt=prompt
            if not instruction or instruction in prompt
            else f"{prompt}. {instruction}",
            negative_prompt=grounded.negative_prompt,
            width=g.width,
            height=g.height,
            steps=g.steps,
            guidance_scale=g.guidance_scale,
            seed=g.seed,
            reference_images=[ids[r.img_id] for r in grounded.reference_images if r.img_id in ids],
        )
        if instruction and previous is not None:
            request.mode = "img2img"
            request.init_image = previous["image"]["sha256"]
            request.strength = g.edit_strength
        writer = runtime.stream_writer
        loop = asyncio.get_running_loop()

        def on_progress(step: int, total: int) -> None:
            loop.call_soon_threadsafe(writer, {"progress": step, "total": total})

        try:
            result = await self.services.generator().generate(request, on_progress=on_progress)
        except GeneratorError as exc:
            return Command(
                goto="finish",
                update={
                    "error": f"generation failed: {exc}",
                    "stages": _event("generate", state, started, f"failed: {exc}"),
                },
            )
        round_no = state.get("round", 0) + 1
        return Command(
            goto="critique",
            update={
                "image": result.model_dump(mode="json"),
                "round": round_no,
                "stages": _event(
                    "generate",
                    state,
                    started,
                    f"round {round_no}: {request.mode} {request.width}x{request.height} "
                    f"seed {result.seed} in {result.elapsed_s:.2f}s on {result.device or '?'}",
                ),
            },
        )

    # -- critique -----------------------------------------------------------------------------
    async def critique(
        self, state: RunState, runtime: Runtime[RunContext]
    ) -> Command[Literal["generate", "finish"]]:
        started = time.perf_counter()
        settings = self.settings(runtime)
        image = GenerationResult.model_validate(state["image"])
        round_no = state.get("round", 1)
        reason = self.services.critique_configured(settings)
        if reason is not None:
            said = reason in (state.get("notices") or [])
            skipped = CritiqueRound(
                round=round_no, image=state["image"] or {}, verdict=None, action="skipped"
            )
            return Command(
                goto="finish",
                update={
                    "rounds": [*state.get("rounds", []), skipped],
                    "notices": [] if said else [reason],
                    "stages": _event("critique", state, started, "skipped (no vision model)"),
                },
            )
        grounded = GroundedPrompt.model_validate(state["grounded"])
        png = self.services.store.get_bytes(image.image.sha256)
        facts = "\n".join(f"- {f.claim}" for f in grounded.facts) or "(none)"
        verdict = await self.services.structured(
            "critique",
            Verdict,
            [
                SystemMessage(prompts.CRITIQUE_SYSTEM),
                HumanMessage(
                    content=[
                        {
                            "type": "text",
                            "text": prompts.CRITIQUE_USER.format(
                                gen_prompt=grounded.gen_prompt, facts=facts
                            ),
                        },
                        {"type": "image_url", "image_url": {"url": image_data_url(png)}},
                    ]
                ),
            ],
            settings,
        )
        done = verdict.match or round_no >= settings.agent.max_rounds
        action: Literal["finish", "edit"] = "finish" if done else "edit"
        this_round = CritiqueRound(
            round=round_no,
            image=state["image"] or {},
            verdict=verdict.model_dump(mode="json"),
            action=action,
        )
        summary = f"round {round_no}: match={verdict.match} score={verdict.score:.2f} -> {action}"
        update: dict[str, Any] = {
            "rounds": [*state.get("rounds", []), this_round],
            "stages": _event("critique", state, started, summary),
        }
        if done:
            if not verdict.match:
                update["notices"] = [
                    f"critique rounds used up ({settings.agent.max_rounds}); "
                    "the last image still has issues"
                ]
            return Command(goto="finish", update=update)
        instruction = verdict.edit_instruction or "; ".join(verdict.issues) or "match the prompt"
        update["edit_instruction"] = instruction
        return Command(goto="generate", update=update)

    # -- finish -------------------------------------------------------------------------------
    async def finish(self, state: RunState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        status = "failed" if state.get("error") else "done"
        return {"stages": _event("finish", state, time.perf_counter(), status)}


async def _search_one(toolkit: Toolkit, query: str) -> Observation:
    """One query per call, so each counts once against the tool budget."""
    results = await toolkit.search([query])
    return results[0] if results else Observation.failure("search", query, "no result")


def _browse_calls(
    toolkit: Toolkit, report: GapReport, observations: list[Observation], per_gap: int
) -> list[ToolCall]:
    """The first `per_gap` result pages of each gap's text searches, each page read once."""
    by_query = {o.query: o for o in observations if o.tool == "search" and o.ok}
    seen: set[str] = set()
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
            if hit.url in seen:
                continue
            seen.add(hit.url)
            picked += 1
            calls.append(("browse", gap.span, partial(toolkit.browse, hit.url, gap.span)))
    return calls


def _image_lines(observations: list[Observation]) -> list[str]:
    seen: set[str] = set()
    lines = []
    for obs in observations:
        for item in obs.items:
            if isinstance(item, ImageHit) and item.img_id not in seen:
                seen.add(item.img_id)
                title = item.title[:80].replace("\n", " ")
                lines.append(f"- {item.img_id}: {title} (from {item.source_url or item.url})")
    return lines


def _check_references(
    grounded: GroundedPrompt, ids: dict[str, str], max_refs: int
) -> tuple[GroundedPrompt, list[str]]:
    """Drop references to images research never found: a model may invent IMG ids."""
    kept = [r for r in grounded.reference_images if r.img_id in ids][:max_refs]
    invented = [r.img_id for r in grounded.reference_images if r.img_id not in ids]
    notices = (
        [f"ignored unknown reference ids from the model: {', '.join(invented)}"] if invented else []
    )
    return grounded.model_copy(update={"reference_images": kept}), notices
