"""What stages hand each other: the models stored in graph state between stages, and the checks
that keep them honest.

A stage reads its inputs from state as these models and writes its output as one of them; no
stage imports another stage. analyze -> `GapReport`; synthesize, refine and the react answer ->
`GroundedPrompt` (Gen-Searcher's answer shape: `gen_prompt` + up to 5 `IMG_###` references, plus
facts and the critic's checklist); critique -> `Verdict`. The checks (`check_references`,
`fallback_requirements`, `needs_checklist`, `outcome_notice`) are the rules every producer of
these models applies the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field, StrictBool, create_model, field_validator, model_validator

from agent.layout import LayoutPlan
from tools.observations import Observation

# -- analyze -> research, synthesize --------------------------------------------------------
GapKind = Literal["entity", "style", "scene", "composition", "text", "count"]


class Gap(BaseModel):
    kind: GapKind = Field(description="What sort of knowledge is missing.")
    span: str = Field(description="The words of the prompt the gap is about.", max_length=200)
    why: str = Field(
        default="", description="Why an image model would get it wrong.", max_length=300
    )
    text_queries: list[str] = Field(
        default_factory=list, max_length=3, description="Web text searches that would fill it."
    )
    image_queries: list[str] = Field(
        default_factory=list, max_length=2, description="Image searches for visual references."
    )
    needs_reference: bool = Field(
        default=False, description="True when the look matters and a reference image helps."
    )
    origin: Literal["llm", "rules", "llm+rules"] = Field(
        default="llm", description="Who found it (set by Groundwork, not the model)."
    )

    @field_validator("text_queries", "image_queries", mode="after")
    @classmethod
    def _drop_blank_and_repeated(cls, queries: list[str]) -> list[str]:
        """Small models emit "" or the same query twice; neither is worth a tool call."""
        kept: list[str] = []
        for q in (" ".join(q.split()) for q in queries):
            if q and q.lower() not in {k.lower() for k in kept}:
                kept.append(q)
        return kept


class GapReport(BaseModel):
    """What the prompt names that an image model probably does not know."""

    gaps: list[Gap] = Field(default_factory=list, max_length=6)


# -- synthesize / refine / react answer -> generate, critique ----------------------------------
class Ref(BaseModel):
    # The pattern is advertised to the model but not enforced here: an id that is malformed or
    # invented is dropped with a notice, which is better than failing a whole grounded prompt
    # over one bad reference (SmolLM2 does this under json_object).
    img_id: str = Field(
        description="IMG_### id of a researched image.",
        json_schema_extra={"pattern": r"^IMG_\d{3}$"},
    )
    note: str = Field(default="", description="What to take from this image.", max_length=200)


class Fact(BaseModel):
    claim: str = Field(description="A visual fact the image must respect.", max_length=300)
    source_url: str = Field(default="", description="Where the fact was found.")


RequirementKind = Literal["entity", "attribute", "count", "relation", "text", "style"]


class Requirement(BaseModel):
    text: str = Field(description="One thing visible in a correct image.", max_length=200)
    kind: RequirementKind = Field(default="entity")
    origin: Literal["llm", "rules"] = Field(
        default="llm",
        description="Set by Groundwork: rules = made from the prompt's words without an LLM.",
        json_schema_extra={"readOnly": True},
    )


class _Grounded(BaseModel):
    """A rewritten prompt that spells out what research found, for a text-to-image model."""

    gen_prompt: str = Field(description="The prompt for the image model.", max_length=1500)
    negative_prompt: str = Field(default="", max_length=500)
    reference_images: list[Ref] = Field(default_factory=list, max_length=5)
    facts: list[Fact] = Field(default_factory=list, max_length=8)
    requirements: list[Requirement] = Field(default_factory=list, max_length=8)
    ordinals: list[dict[str, str]] = Field(
        default_factory=list,
        description="Set by Groundwork: how 'the first reference image'-style phrases of a "
        "trained policy were resolved (shown in the dossier).",
        json_schema_extra={"readOnly": True},
    )


class GroundedPrompt(_Grounded):
    """A rewritten prompt that spells out what research found, for a text-to-image model."""

    layout: LayoutPlan | None = Field(
        default=None, description="Regions with their own prompts, for several subjects."
    )


@functools.cache
def grounded_schema(with_layout: bool) -> type[BaseModel]:
    """The answer schema the LLM sees: the layout is offered only where it can be used (small
    models fill optional fields they are shown). Both are named GroundedPrompt. Cached: a
    class made per call is a class kept per call (pydantic and the LLM layer hold on to
    schemas), which grew a long chat by one class a turn (issue 21.10)."""
    if with_layout:
        return GroundedPrompt
    return create_model("GroundedPrompt", __base__=_Grounded, __doc__=_Grounded.__doc__)


class Checklist(BaseModel):
    """What a checker verifies in the image."""

    requirements: list[Requirement] = Field(min_length=1, max_length=6)


class PromptPlan(Checklist):
    """What a checker verifies in the image, and optionally a regional layout."""

    layout: LayoutPlan | None = None


# -- critique -> generate (repair), finish ---------------------------------------------------
class Box(BaseModel):
    x0: float = Field(ge=0.0, le=1.0)
    y0: float = Field(ge=0.0, le=1.0)
    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError("a box needs x0 < x1 and y0 < y1")
        return self

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


class Check(BaseModel):
    requirement: str = Field(default="", max_length=200)
    # Strict: "yes", "probably" or 1 is not a clear answer, and an unclear answer must never
    # be read as a pass.
    passed: StrictBool
    reason: str = Field(default="", max_length=300)
    region: Box | None = None


class Verdict(BaseModel):
    """A VLM's check of an image, one entry per requirement."""

    checks: list[Check] = Field(min_length=1, max_length=8)
    score: float = Field(ge=0.0, le=1.0, description="0 = unrelated, 1 = perfect.")
    edit_instruction: str = Field(default="", max_length=300)

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.score >= 1.0 and not self.match:
            raise ValueError("score 1 means every requirement passed, but some checks failed")
        return self

    @property
    def match(self) -> bool:
        return all(c.passed for c in self.checks)


@functools.cache
def verdict_schema(n: int) -> type[Verdict]:
    """`Verdict` that must have exactly `n` checks: a verdict with a check missing or extra
    cannot be lined up with the requirements, so it is invalid (and repaired), not guessed.
    Cached per `n` (a handful of values), as `grounded_schema` is."""
    model: type[Verdict] = create_model(
        "Verdict",
        __base__=Verdict,
        __doc__=Verdict.__doc__,
        checks=(
            list[Check],
            Field(min_length=n, max_length=n, description=f"Exactly {n}: one per requirement."),
        ),
    )
    return model


# -- the checks every producer applies ---------------------------------------------------------
def needs_checklist(grounded: GroundedPrompt) -> bool:
    """True when no LLM wrote the requirements (they are the prompt's words, rule-made)."""
    return all(r.origin == "rules" for r in grounded.requirements)


def fallback_requirements(prompt: str, gaps: GapReport) -> list[Requirement]:
    """Without an LLM answer: each gap's words must be visible; the prompt as a whole only when
    there is no gap to check (it would repeat every gap, as one vague entity, in the dossier)."""
    reqs: list[Requirement] = []
    for g in gaps.gaps[:5]:
        span = " ".join(g.span.split())
        if not span or any(r.text.lower() == span.lower() for r in reqs):
            continue
        kind: RequirementKind = (
            "text" if g.kind == "text" else "style" if g.kind == "style" else "entity"
        )
        reqs.append(Requirement(text=span[:200], kind=kind, origin="rules"))
    return reqs or [Requirement(text=prompt[:200], kind="entity", origin="rules")]


def check_references(
    grounded: GroundedPrompt, ids: Mapping[str, str], max_refs: int
) -> tuple[GroundedPrompt, list[str]]:
    """Drop references to images research never found: a model may invent IMG ids."""
    kept = [r for r in grounded.reference_images if r.img_id in ids][:max_refs]
    invented = [r.img_id for r in grounded.reference_images if r.img_id not in ids]
    notices = (
        [f"ignored unknown reference ids from the model: {', '.join(invented)}"] if invented else []
    )
    return grounded.model_copy(update={"reference_images": kept}), notices


def outcome_notice(calls: int, observations: list[Observation]) -> str | None:
    """Say what happened: no call made is not the same as every call failing."""
    if calls == 0:
        return "no tool calls were made (no gap had a query, or the tool budget was 0)"
    failed = [o for o in observations if not o.ok]
    empty = [o for o in observations if o.ok and not o.items]
    if len(failed) == len(observations):
        return f"every tool call failed ({len(failed)} of {calls})"
    if len(failed) + len(empty) == len(observations):
        return (
            f"every tool call failed or came back empty ({len(failed)} failed, {len(empty)} empty)"
        )
    return None
