"""judge (best-of-N, shared by every policy): pick the best of the round's candidate images.

A pairwise VLM judge (role "judge") compares two candidates at a time, each pair in BOTH orders:
VLMs favour one position, and a judge that changes its answer when the images swap places has
no preference (a tie). A knockout keeps the current best unless a challenger wins over both
orders, so N candidates cost 2(N-1) calls. Without a VLM, CLIP similarity between the prompt and
each image (open_clip through retrieval's ranker, `retrieval.clip_model`) decides; with neither,
best-of-N is skipped at generation time. The dossier says which judge decided.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from agent.contracts import GroundedPrompt
from agent.llm import LLMError, image_data_url
from agent.stage import Result, StageRun
from core.errors import GroundworkError
from generators.base import GenerationResult

SYSTEM = """\
You compare two images generated for the same prompt. Decide which one better matches the
prompt and its requirements: the right subjects, attributes, counts, relations and text first,
then overall image quality. Image A is shown first, image B second. Answer better = "A", "B", or
"tie" when neither is clearly better. Answer with a JSON object only."""

USER = """\
Prompt: {gen_prompt}
Requirements:
{requirements}"""

Method = Literal["vlm", "clip"]


class Preference(BaseModel):
    """Which of two images better matches the prompt."""

    better: Literal["A", "B", "tie"]
    reason: str = Field(default="", max_length=300)


def combine(first: str, second: str) -> int:
    """+1 when x wins, -1 when y wins, 0 for a tie. `first` is the answer with x shown as A,
    `second` with y shown as A. A judge that names the same position both times flipped with
    the order: the two answers cancel out."""
    towards_x = {"A": 1, "B": -1, "tie": 0}
    total = towards_x[first] - towards_x[second]
    return (total > 0) - (total < 0)


async def _prefer(
    run: StageRun, grounded: GroundedPrompt, a: GenerationResult, b: GenerationResult
) -> str:
    store = run.services.store
    content: list[str | dict[str, Any]] = [
        {
            "type": "text",
            "text": USER.format(
                gen_prompt=grounded.gen_prompt,
                requirements="\n".join(f"- {r.text}" for r in grounded.requirements) or "(none)",
            ),
        },
        {"type": "text", "text": "Image A:"},
        {
            "type": "image_url",
            "image_url": {"url": image_data_url(store.get_bytes(a.image.sha256))},
        },
        {"type": "text", "text": "Image B:"},
        {
            "type": "image_url",
            "image_url": {"url": image_data_url(store.get_bytes(b.image.sha256))},
        },
    ]
    answer = await run.structured(
        "judge", Preference, [SystemMessage(SYSTEM), HumanMessage(content=content)]
    )
    return answer.better


async def compare(
    run: StageRun, grounded: GroundedPrompt, x: GenerationResult, y: GenerationResult
) -> tuple[int, list[str]]:
    """x against y in both orders (one after the other, so a trace reads in order)."""
    first = await _prefer(run, grounded, x, y)
    second = await _prefer(run, grounded, y, x)
    return combine(first, second), [first, second]


async def knockout(
    run: StageRun, grounded: GroundedPrompt, candidates: list[GenerationResult]
) -> tuple[int, list[dict[str, Any]]]:
    """The index of the winner and every match played. A tie keeps the current best."""
    best = 0
    matches: list[dict[str, Any]] = []
    for i in range(1, len(candidates)):
        outcome, answers = await compare(run, grounded, candidates[best], candidates[i])
        winner = best if outcome > 0 else i if outcome < 0 else None
        matches.append(
            {
                "a": candidates[best].seed,
                "b": candidates[i].seed,
                "answers": answers,
                "winner": candidates[winner].seed if winner is not None else "tie",
            }
        )
        if outcome < 0:
            best = i
    return best, matches


async def clip_scores(
    run: StageRun, prompt: str, candidates: list[GenerationResult]
) -> list[float]:
    """CLIP cosine similarity of each candidate to the prompt (retrieval's open_clip ranker)."""
    from retrieval.api import make_image_ranker

    store = run.services.store
    settings = run.settings.retrieval

    def score() -> list[float]:
        ranker = make_image_ranker(settings)
        if ranker is None:
            raise GroundworkError("no CLIP model configured (retrieval.clip_model)")
        images = [store.open_image(c.image.sha256) for c in candidates]
        return [float(s) for s in ranker.rank(prompt, images)]

    return await asyncio.to_thread(score)


async def judge(run: StageRun) -> Result:
    state = run.state
    candidates = [GenerationResult.model_validate(c) for c in state.get("candidates") or []]
    grounded = GroundedPrompt.model_validate(state["grounded"])
    method: Method | None = run.services.judge_method(run.settings)
    notices: list[str] = []
    record: dict[str, Any] = {
        "candidates": [{"seed": c.seed, "sha256": c.image.sha256} for c in candidates]
    }
    winner = 0
    if method == "vlm":
        try:
            winner, matches = await knockout(run, grounded, candidates)
            record.update(
                {
                    "method": "vlm-pairwise",
                    "model": run.settings.llm.model_for("judge"),
                    "matches": matches,
                }
            )
        except LLMError as exc:
            notices.append(f"the pairwise judge failed ({exc}); falling back")
            method = "clip" if run.settings.retrieval.clip_model else None
    if method == "clip":
        try:
            scores = await clip_scores(run, grounded.gen_prompt, candidates)
            winner = max(range(len(scores)), key=lambda i: scores[i])
            record.update(
                {
                    "method": "clip",
                    "model": run.settings.retrieval.clip_model,
                    "scores": [round(s, 4) for s in scores],
                }
            )
        except GroundworkError as exc:
            notices.append(f"CLIP could not score the candidates ({exc})")
            method = None
    if method is None:
        record["method"] = "none"
        notices.append(
            f"best-of-{len(candidates)}: no judge could decide; kept the first candidate "
            f"(seed {candidates[0].seed})"
        )
    chosen = candidates[winner]
    record["winner"] = winner
    record["seed"] = chosen.seed
    image = chosen.model_dump(mode="json")
    update: dict[str, Any] = {
        "last_image": image,
        "candidates": [],
        "judging": record,
        "notices": notices,
    }
    if state.get("best_score") is None:
        update["image"] = image  # until a critic scores it, the newest image is the best one
    return Result(
        update,
        f"{record['method']} picked seed {chosen.seed} of {len(candidates)} candidates",
    )
