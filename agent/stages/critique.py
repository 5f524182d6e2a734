"""critique (shared by every policy): a VLM checks the image requirement by requirement and the
repair policy picks the next step (Understanding-in-Generation's MATCH / EDIT_NEEDED loop).

All pass -> finish. Failures confined to a small region -> inpaint that region. Local failures
-> img2img with a strength chosen from how much failed. Global failures (wrong subject, wrong
count) -> regenerate from a revised prompt. The loop stops when all pass, when the round budget
is spent, or when the score did not improve; the run keeps the best image seen, not the last.

The verdict is schema-checked against the requirement list: exactly one check per requirement,
JSON booleans, a score that does not contradict the checks. Anything else is sent back for
repair (bounded), and a critic that stays unusable never counts as a match: the run keeps the
best image so far, says so, and finishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage

from agent.checklist import write_checklist
from agent.contracts import (
    Box,
    GroundedPrompt,
    Requirement,
    Verdict,
    needs_checklist,
    verdict_schema,
)
from agent.llm import LLMError, image_data_url
from agent.prompt_fit import encoder, fit_prompt, merge_instruction
from agent.stage import Result, StageRun
from agent.state import CritiqueRound
from generators.base import GenerationResult

SYSTEM = """\
You check generated images against a list of requirements. Give exactly one entry in checks
for EACH numbered requirement, in the same order: whether the image visibly satisfies it
(passed: true or false), why (reason), and, when a failure is confined to one area of the
image, that area as region with x0, y0, x1, y1 between 0 and 1 ((0, 0) is the top-left corner).
Give score: 0 = unrelated image, 1 = every requirement visibly right. Give edit_instruction: one
short imperative change that would fix the worst failure (empty when everything passed).
Answer with a JSON object only."""

USER = """\
Prompt the image was made from: {gen_prompt}
Facts the image must respect:
{facts}
Requirements ({n}; give {n} checks, in this order):
{requirements}
{refs}"""


Action = Literal["finish", "inpaint", "img2img", "regenerate"]
GLOBAL_KINDS = frozenset({"entity", "count"})
INPAINT_MAX_AREA = 0.5
"""Failures boxed within this share of the image are inpainted; larger ones are edited whole."""


def decide(
    verdict: Verdict, kinds: Mapping[str, str], *, edit_strength: float
) -> tuple[Action, dict[str, Any]]:
    """The repair for a verdict: what to do and its parameters (strength, box)."""
    failed = [c for c in verdict.checks if not c.passed]
    if not failed:
        return "finish", {}
    if all(c.region is not None for c in failed):
        boxes = [c.region for c in failed if c.region is not None]
        union = Box(
            x0=min(b.x0 for b in boxes),
            y0=min(b.y0 for b in boxes),
            x1=max(b.x1 for b in boxes),
            y1=max(b.y1 for b in boxes),
        )
        if union.area <= INPAINT_MAX_AREA:
            return "inpaint", {"box": union.model_dump(), "strength": 0.85}
    if any(kinds.get(c.requirement) in GLOBAL_KINDS for c in failed) and (
        len(failed) > len(verdict.checks) / 2 or verdict.score < 0.3
    ):
        return "regenerate", {}
    share = len(failed) / len(verdict.checks)
    return "img2img", {"strength": round(min(0.8, max(0.3, edit_strength * (0.5 + share))), 2)}


def quality(verdict: dict[str, Any]) -> tuple[bool, float]:
    """How rounds compare: an image that passes everything beats one that does not, then score."""
    return all(c["passed"] for c in verdict["checks"]), float(verdict["score"])


def _requirements(grounded: GroundedPrompt) -> list[Requirement]:
    return grounded.requirements or [
        Requirement(text=grounded.gen_prompt[:200], kind="entity", origin="rules")
    ]


def _messages(
    run: StageRun, grounded: GroundedPrompt, reqs: list[Requirement], image: GenerationResult
) -> list[Any]:
    store = run.services.store
    ids = run.state.get("image_ids") or {}
    refs = [r for r in grounded.reference_images if r.img_id in ids and store.exists(ids[r.img_id])]
    content: list[str | dict[str, Any]] = [
        {
            "type": "text",
            "text": USER.format(
                # A repaired image was made from the repair prompt, not the grounded one.
                gen_prompt=run.state.get("image_prompt") or grounded.gen_prompt,
                facts="\n".join(f"- {f.claim}" for f in grounded.facts) or "(none)",
                n=len(reqs),
                requirements="\n".join(f"{i + 1}. [{r.kind}] {r.text}" for i, r in enumerate(reqs)),
                refs="The image to check comes first; reference images of the real subject follow."
                if refs
                else "",
            ),
        },
        {
            "type": "image_url",
            "image_url": {"url": image_data_url(store.get_bytes(image.image.sha256))},
        },
    ]
    for ref in refs:
        content.append({"type": "text", "text": f"Reference {ref.img_id}: {ref.note}"})
        content.append(
            {
                "type": "image_url",
                "image_url": {"url": image_data_url(store.get_bytes(ids[ref.img_id]))},
            }
        )
    return [SystemMessage(SYSTEM), HumanMessage(content=content)]


async def critique(run: StageRun) -> Result:
    state = run.state
    settings = run.settings
    last = state.get("last_image") or state["image"] or {}
    round_no = state.get("round", 1)
    rounds = list(state.get("rounds", []))
    judge = state.get("judging")
    reason = run.services.critique_configured(settings)
    if reason is not None:
        said = reason in (state.get("notices") or [])
        skipped = CritiqueRound(
            round=round_no, image=last, verdict=None, action="skipped", judge=judge
        )
        return Result(
            {"rounds": [*rounds, skipped], "notices": [] if said else [reason], "repair": None},
            "skipped (no vision model)",
        )
    grounded = GroundedPrompt.model_validate(state["grounded"])
    update: dict[str, Any] = {}
    notices: list[str] = []
    if needs_checklist(grounded):
        # A trained policy's answer (react) brings no checklist; write one before checking.
        grounded, more = await write_checklist(
            run, state.get("prompt", ""), grounded, offer_layout=False
        )
        already = set(state.get("notices") or [])
        notices += [n for n in more if n not in already]
        if not needs_checklist(grounded):
            update["grounded"] = grounded.model_dump(mode="json")
    image = GenerationResult.model_validate(last)
    reqs = _requirements(grounded)
    try:
        verdict = await run.structured(
            "critique", verdict_schema(len(reqs)), _messages(run, grounded, reqs, image)
        )
    except LLMError as exc:
        checked = [(quality(v), r.get("round")) for r in rounds if (v := r.get("verdict"))]
        kept = (
            f"kept round {max(checked)[1]}'s image, the best one checked"
            if checked
            else "kept the image unchecked"
        )
        this = CritiqueRound(
            round=round_no, image=last, verdict=None, action="skipped", detail=str(exc), judge=judge
        )
        update["rounds"] = [*rounds, this]
        update["notices"] = [*notices, f"the critic was unusable ({exc}); {kept}"]
        update["repair"] = None
        return Result(update, f"round {round_no}: critic unusable")
    # Line the checks up with the requirements by position: the echo may be paraphrased.
    for check, req in zip(verdict.checks, reqs, strict=True):
        check.requirement = req.text
    kinds = {r.text: r.kind for r in reqs}
    action, params = decide(verdict, kinds, edit_strength=settings.generator.edit_strength)
    this_verdict = verdict.model_dump(mode="json")
    prior = [quality(v) for r in rounds if (v := r.get("verdict"))]
    best = max(prior) if prior else None
    improved = best is None or quality(this_verdict) > best
    if improved:
        update.update({"image": last, "best_score": verdict.score})
    failed = [c for c in verdict.checks if not c.passed]
    stop = ""
    if action == "finish":
        stop = "all requirements pass"
    elif not improved:
        stop = "score did not improve"
        notices.append(
            f"repair stopped at round {round_no}: the score did not improve "
            f"({verdict.score:.2f}, best {best[1] if best else 0:.2f}); kept the best image"
        )
    elif round_no >= settings.agent.max_rounds:
        stop = "round budget spent"
        notices.append(
            f"repair rounds used up ({settings.agent.max_rounds}); the best image still fails "
            f"{len(failed)} requirement(s)"
        )
    summary = (
        f"round {round_no}: {len(verdict.checks) - len(failed)}/{len(verdict.checks)} pass, "
        f"score {verdict.score:.2f} -> {stop or action}"
    )
    repair: dict[str, Any] = {}
    if not stop:
        instruction = verdict.edit_instruction or "; ".join(
            f"{c.requirement}: {c.reason}" if c.reason else c.requirement for c in failed
        )
        enc = await encoder(run)
        prompt, more = await fit_prompt(
            run,
            merge_instruction(grounded.gen_prompt, instruction),
            enc,
            what="repair prompt",
            change_first=True,
        )
        notices += more
        repair = {"action": action, "prompt": prompt, **params}
        if action == "inpaint":
            repair["mask"] = _mask(run, params["box"], image)
    detail = stop or f"{action}" + (
        f" (strength {params['strength']})" if "strength" in params else ""
    )
    if repair:
        detail += f": {repair['prompt']}"
    this_round = CritiqueRound(
        round=round_no,
        image=last,
        verdict=this_verdict,
        action="finish" if stop else action,
        detail=detail,
        judge=judge,
    )
    update["rounds"] = [*rounds, this_round]
    update["notices"] = notices
    # The graph routes on this: a repair to make goes back to generate, None finishes.
    update["repair"] = None if stop else repair
    return Result(update, summary)


def _mask(run: StageRun, box: dict[str, float], image: GenerationResult) -> str:
    """The inpaint mask (white = repaint) the size of the image, feathered a little so the
    patch blends in, stored as an artifact."""
    from generators.masks import store_box_mask

    w = image.image.width or run.settings.generator.width
    h = image.image.height or run.settings.generator.height
    ref = store_box_mask(
        run.services.store,
        (box["x0"], box["y0"], box["x1"], box["y1"]),
        w,
        h,
        feather_px=max(1, min(w, h) // 64),
    )
    return ref.sha256
