"""analyze: find what the prompt names that an image model probably does not know.

Two sources, merged: the deterministic candidate finder (agent/gaps.py), which works with any
model, and the LLM's `GapReport`, validated against the prompt. A span the prompt does not
contain is dropped with a notice; a gap without queries gets queries from its span and context.
How far the LLM is trusted is `agent.gap_trust` (auto: gated by the rules for the embedded model,
verbatim for a configured endpoint). Each gap records its origin for the dossier.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.messages import HumanMessage, SystemMessage

from agent.contracts import Gap, GapReport
from agent.gaps import Candidate, find_candidates, fold, grounded_query, occurs_in
from agent.llm import LLMError
from agent.stage import Result, StageRun

SYSTEM = """\
You find knowledge gaps in prompts for a text-to-image model.
A gap is anything the image model probably cannot draw correctly from its training data alone:
a specific product, person, place, event, recent thing (after 2023), niche art style, exact text
to render, an exact count, or a specific composition. Common objects and generic scenes are NOT
gaps. span must be words copied exactly from the prompt. For each gap give short web search
queries (text_queries) and, when the look matters, image search queries (image_queries) and
needs_reference=true.
At most {max_gaps} gaps. If the prompt needs no research, answer with an empty gaps list.
Answer with a JSON object only."""

USER = "Image prompt: {prompt}"


def rule_gap(c: Candidate, prompt: str) -> Gap:
    text_q, image_q = c.queries(prompt)
    return Gap(
        kind=c.kind,
        span=c.span,
        why=f"flagged by rule: {', '.join(c.rules)}",
        text_queries=text_q[:3] if c.kind != "text" else [],
        image_queries=image_q[:2] if c.kind != "text" else [],
        needs_reference=c.kind in ("entity", "style"),
        origin="rules",
    )


def _overlaps(span: str, candidate: Candidate) -> bool:
    a, b = fold(span), fold(candidate.span)
    # Whole words only: "Japan" does not overlap "Japanese".
    return bool(a and b) and (
        occurs_in(a, b) or occurs_in(b, a) or bool(set(a.split()) & set(b.split()) - _COMMON)
    )


_COMMON = frozenset({"the", "a", "an", "of", "in", "on", "at", "and"})


def merge_gaps(
    prompt: str, llm: GapReport | None, *, trust: Literal["gated", "verbatim"], max_gaps: int
) -> tuple[GapReport, list[str]]:
    """LLM gaps validated against the prompt and the rules; rule gaps fill in the rest."""
    notices: list[str] = []
    candidates = find_candidates(prompt)
    rules = [rule_gap(c, prompt) for c in candidates]
    from_llm: list[Gap] = []
    dropped_absent: list[str] = []
    dropped_gated: list[str] = []
    blank = 0
    for gap in llm.gaps if llm else []:
        if not gap.span.strip(" .,'\""):
            blank += 1  # a weak model's empty gap: counted, not listed as ''
            continue
        if not occurs_in(gap.span, prompt):
            dropped_absent.append(gap.span)
            continue
        matching = [c for c in candidates if _overlaps(gap.span, c)]
        if trust == "gated" and not matching:
            dropped_gated.append(gap.span)
            continue
        origin: Literal["llm", "llm+rules"] = "llm+rules" if matching else "llm"
        text_q, image_q = gap.text_queries, gap.image_queries
        if trust == "gated":
            # A weak model's queries are checked like its spans: about the span, plain words.
            text_q = [q for q in text_q if grounded_query(q, gap.span, prompt)]
            image_q = [q for q in image_q if grounded_query(q, gap.span, prompt)]
        if not text_q and not image_q and gap.kind != "text":
            context = matching[0] if matching else None
            text_q, image_q = context.queries(prompt) if context else ([gap.span], [gap.span])
        from_llm.append(
            gap.model_copy(
                update={
                    "origin": origin,
                    "text_queries": text_q[:3],
                    "image_queries": image_q[:2],
                }
            )
        )
    if dropped_absent:
        notices.append(
            "ignored gaps whose words are not in the prompt: "
            + ", ".join(repr(s) for s in dropped_absent)
        )
    if blank:
        notices.append(f"ignored {blank} LLM gap(s) with no words from the prompt")
    if dropped_gated:
        notices.append(
            "ignored LLM gaps that no rule confirms (agent.gap_trust=gated): "
            + ", ".join(repr(s) for s in dropped_gated)
        )
    # A rule gap stands unless an LLM gap already covers its words.
    kept = from_llm + [
        gap
        for c, gap in zip(candidates, rules, strict=True)
        if not any(_overlaps(k.span, c) for k in from_llm)
    ]
    return GapReport(gaps=kept[:max_gaps]), notices


def trust_level(run: StageRun) -> Literal["gated", "verbatim"]:
    trust = run.settings.agent.gap_trust
    if trust == "auto":
        return "gated" if run.services.embedded(run.settings) else "verbatim"
    return trust


async def analyze(run: StageRun) -> Result:
    prompt = run.state["prompt"]
    max_gaps = run.settings.agent.max_gaps
    notices: list[str] = []
    llm_report: GapReport | None
    try:
        llm_report = await run.structured(
            "analyze",
            GapReport,
            [
                SystemMessage(SYSTEM.format(max_gaps=max_gaps)),
                HumanMessage(USER.format(prompt=prompt)),
            ],
        )
    except LLMError as exc:
        # The rules still find the basic gaps: a failed LLM (invalid answers, a timeout, an
        # HTTP 5xx, a reply cut at max_tokens) costs quality, not the run.
        llm_report = None
        notices.append(f"gap analysis by the LLM failed ({exc}); using rule-based gaps only")
    report, more = merge_gaps(prompt, llm_report, trust=trust_level(run), max_gaps=max_gaps)
    notices += more
    spans = ", ".join(f"{g.span} [{g.origin}]" for g in report.gaps) or "none"
    return Result(
        {"gaps": report.model_dump(mode="json"), "notices": notices},
        f"{len(report.gaps)} gaps: {spans}",
    )
