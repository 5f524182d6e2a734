"""generate (shared by every policy): the grounded prompt, or the repair the critic asked for,
to the `Generator`; the state keeps the artifact's hash, never bytes.

A new image (the first round or a regenerate) is made `agent.candidates` times with different
seeds, as one batch where the backend can (`generate_many`), and the judge picks one; edits
(img2img, inpaint) are made once. A layout plan reaches the generator as its regional layout.
Whatever the policy wrote, the prompt sent fits the model's text encoder.

A generation failure raises: the checkpoint stays before this stage, so
`groundwork run --thread T` resumes here without repeating analysis and research.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.contracts import GroundedPrompt
from agent.prompt_fit import Encoder, encoder, fit_prompt
from agent.stage import Result, StageRun
from generators.base import GenerationRequest, GenerationResult, generate_many


def build_request(run: StageRun) -> tuple[GenerationRequest, str]:
    """The request for this round and a short description of it."""
    state = run.state
    g = run.settings.generator
    grounded = GroundedPrompt.model_validate(state["grounded"])
    ids = state.get("image_ids") or {}
    request = GenerationRequest(
        prompt=grounded.gen_prompt,
        negative_prompt=grounded.negative_prompt,
        width=g.width,
        height=g.height,
        steps=g.steps,
        guidance_scale=g.guidance_scale,
        seed=g.seed,
        reference_images=[ids[r.img_id] for r in grounded.reference_images if r.img_id in ids],
    )
    repair = state.get("repair")
    last = state.get("last_image")
    if repair is not None and last is not None:
        request.prompt = repair.get("prompt") or request.prompt
        action = repair["action"]
        if action in ("img2img", "inpaint"):
            request.mode = action
            request.init_image = last["image"]["sha256"]
            request.strength = float(repair.get("strength") or g.edit_strength)
            request.mask_image = repair.get("mask")
        elif action == "regenerate":
            # Past every seed used so far this turn (best-of-N used `candidates` per round).
            request.seed = g.seed + state.get("round", 0) * run.settings.agent.candidates
        return request, f"{action}"
    instruction = state.get("edit_instruction")
    if instruction and last is not None:
        # A chat refine edits the image the user saw, with the change merged into the prompt.
        request.mode = "img2img"
        request.init_image = last["image"]["sha256"]
        request.strength = g.edit_strength
        return request, "img2img (chat refine)"
    return request, request.mode


async def _fit(
    run: StageRun, request: GenerationRequest, grounded: GroundedPrompt, enc: Encoder
) -> tuple[dict[str, Any], list[str]]:
    """The layout plan as the request's regional layout (where the model takes one), and every
    prompt within budget: a policy whose answer skipped synthesis (react) is checked here."""
    update: dict[str, Any] = {}
    notices: list[str] = []
    said = set(run.state.get("notices") or [])
    plan = grounded.layout
    if plan is not None and request.mode != "inpaint":
        if enc.regional:
            request.layout = plan.to_regional()
        else:
            text = "the layout plan was not used: the generator does not take regional layouts"
            notices += [] if text in said else [text]
    edited = run.state.get("repair") is not None
    prompt, more = await fit_prompt(run, request.prompt, enc, change_first=edited)
    notices += more
    if prompt != request.prompt:
        request.prompt = prompt
        if not edited and request.prompt != grounded.gen_prompt:
            update["grounded"] = grounded.model_copy(update={"gen_prompt": prompt}).model_dump(
                mode="json"
            )
    if request.layout is not None:
        regions = []
        for i, region in enumerate(request.layout.regions):
            text, more = await fit_prompt(run, region.prompt, enc, what=f"region {i + 1} prompt")
            notices += more
            regions.append(region.model_copy(update={"prompt": text}))
        request.layout = request.layout.model_copy(update={"regions": regions})
    return update, notices


async def generate(run: StageRun) -> Result:
    request, what = build_request(run)
    grounded = GroundedPrompt.model_validate(run.state["grounded"])
    enc = await encoder(run)
    update, notices = await _fit(run, request, grounded, enc)
    loop = asyncio.get_running_loop()

    def on_progress(step: int, total: int) -> None:
        loop.call_soon_threadsafe(run.emit, {"progress": step, "total": total})

    generator = run.services.generator()
    n = run.settings.agent.candidates if request.mode == "text2img" else 1
    if n > 1 and run.services.judge_method(run.settings) is None:
        text = (
            f"best-of-{n} skipped: no judge (set a vision model, "
            "GROUNDWORK_LLM__CRITIQUE_MODEL, or a CLIP model, GROUNDWORK_RETRIEVAL__CLIP_MODEL)"
        )
        notices += [] if text in (run.state.get("notices") or []) else [text]
        n = 1
    candidates: list[GenerationResult] = []
    if n > 1:
        seeds = [request.seed + i for i in range(n)]
        candidates = await generate_many(generator, request, seeds, on_progress)
        result = candidates[0]  # until the judge picks
        what += f", {n} candidates"
    else:
        result = await generator.generate(request, on_progress=on_progress)
    notices += _reference_notice(result, run.state.get("notices") or [])
    round_no = run.state.get("round", 0) + 1
    image = result.model_dump(mode="json")
    update.update(
        {
            "last_image": image,
            "image_prompt": request.prompt,
            "round": round_no,
            "repair": None,
            "candidates": [c.model_dump(mode="json") for c in candidates],
            "judging": None,
            "notices": notices,
        }
    )
    if run.state.get("image") is None or run.state.get("best_score") is None:
        update["image"] = image  # until a critic scores it, the newest image is the best one
    if request.layout is not None:
        what += f", {len(request.layout.regions)} regions"
    return Result(
        update,
        f"round {round_no}: {what} {request.width}x{request.height} seed {result.seed} in "
        f"{result.elapsed_s:.2f}s on {result.device or '?'}",
    )


def _reference_notice(result: GenerationResult, said: list[str]) -> list[str]:
    """Say when chosen references did not reach the generator (no adapter fits the model...),
    so a user never believes an image was conditioned on pixels it never saw."""
    unused = [u for u in result.references if not u.used]
    if not unused:
        return []
    reasons = sorted({u.why or "the generator did not use it" for u in unused})
    text = (
        f"{len(unused)} of {len(result.references)} chosen reference image(s) did not reach the "
        f"generator, only their descriptions did: {'; '.join(reasons)}"
    )
    return [] if text in said else [text]
