"""Best-of-N: N seeds in one batch, a pairwise VLM judge that sees each pair in both orders (a
judge that flips with the order is a tie), CLIP as the fallback judge, the dossier says who."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from agent.settings import Settings
from agent.stages.judge import combine
from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from graphs.runner import Runner
from tests.repair.conftest import NO_GAPS
from tests.support.scripted_llm import ScriptedLLM

PROMPT = "a red apple on a table"
PLAN = {"requirements": [{"text": "a red apple", "kind": "entity"}]}
MATCH = {"checks": [{"requirement": "a red apple", "passed": True}], "score": 0.9}


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("B", "A", -1),  # y preferred in both orders: y wins
        ("A", "B", 1),  # x preferred in both orders: x wins
        ("B", "B", 0),  # always the second image: flips with the order, a tie
        ("A", "A", 0),  # always the first image: a tie
        ("tie", "A", -1),  # one tie, one preference: the preference stands
        ("tie", "tie", 0),
    ],
)
def test_both_orders_cancel_position_bias(first: str, second: str, expected: int) -> None:
    assert combine(first, second) == expected


def _images_sent(call: dict[str, Any]) -> list[bytes]:
    parts = call["messages"][-1]["content"]
    return [
        base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
        for p in parts
        if p.get("type") == "image_url"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("answers", "winner"),
    [(("B", "A"), 1), (("B", "B"), 0)],
    ids=["prefers-B-in-both-orders", "flips-with-the-order"],
)
async def test_pairwise_judge_picks_the_candidate_it_prefers_in_both_orders(
    settings: Settings,
    scripted_llm: ScriptedLLM,
    answers: tuple[str, str],
    winner: int,
) -> None:
    from agent.services import Services

    services = Services(settings.merged({"agent": {"candidates": 2}}))
    seen: list[GenerationRequest] = []
    generator: Any = services.generator()
    many = generator.generate_many

    async def recording(request: GenerationRequest, seeds: Any, *args: Any) -> Any:
        seen.append(request)
        return await many(request, seeds, *args)

    generator.generate_many = recording
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", PLAN)
    scripted_llm.add("Preference", *({"better": a} for a in answers))
    scripted_llm.add("Verdict", MATCH)
    try:
        async with Runner(services.settings, services) as runner:
            outcome = await runner.run(PROMPT, thread_id="bestof")
    finally:
        await services.aclose()

    assert outcome.status == "done", outcome.error
    assert len(seen) == 1  # the two seeds were one generate_many call
    judge = outcome.output["rounds"][0]["judge"]
    assert judge["method"] == "vlm-pairwise" and judge["model"] == "scripted-vlm"
    candidates = judge["candidates"]
    assert [c["seed"] for c in candidates] == [0, 1]
    assert judge["winner"] == winner and judge["seed"] == winner
    assert judge["matches"][0]["winner"] == (1 if winner else "tie")
    assert outcome.image_sha256 == candidates[winner]["sha256"]
    # the judge saw the pair as (0, 1), then as (1, 0)
    store = ArtifactStore.from_settings(settings.artifacts)
    a, b = (store.get_bytes(c["sha256"]) for c in candidates)
    calls = scripted_llm.calls("Preference")
    assert [_images_sent(c) for c in calls] == [[a, b], [b, a]]
    assert all(c["model"] == "scripted-vlm" for c in calls)
    assert outcome.run_dir is not None
    dossier = (outcome.run_dir / "dossier.md").read_text()
    assert "picked from 2 candidates by pairwise VLM judge (both orders)" in dossier


@pytest.mark.slow
async def test_without_a_vlm_clip_judges_and_the_dossier_says_so(
    settings: Settings, scripted_llm: ScriptedLLM, tmp_path: Path
) -> None:
    from agent.services import Services
    from tests.support.tiny_clip import register_tiny_clip

    clip = register_tiny_clip(tmp_path / "clip")
    no_vlm = settings.merged({"agent": {"candidates": 3}, "retrieval": {"clip_model": clip}})
    no_vlm = no_vlm.model_copy(
        update={"llm": no_vlm.llm.model_copy(update={"critique_model": None})}
    )
    scripted_llm.add("GapReport", NO_GAPS)  # no critic: no checklist, no verdict
    services = Services(no_vlm)
    try:
        async with Runner(no_vlm, services) as runner:
            outcome = await runner.run(PROMPT, thread_id="clip")
    finally:
        await services.aclose()

    assert outcome.status == "done", outcome.error
    judge = outcome.output["rounds"][0]["judge"]
    assert judge["method"] == "clip" and judge["model"] == clip
    scores = judge["scores"]
    assert len(scores) == 3 and judge["winner"] == scores.index(max(scores))
    assert outcome.image_sha256 == judge["candidates"][judge["winner"]]["sha256"]
    assert scripted_llm.calls("Preference") == []
    assert outcome.run_dir is not None
    assert "by CLIP score" in (outcome.run_dir / "dossier.md").read_text()


@pytest.mark.slow
async def test_best_of_n_without_any_judge_makes_one_image_and_says_why(
    settings: Settings, scripted_llm: ScriptedLLM
) -> None:
    from agent.services import Services

    bare = settings.merged({"agent": {"candidates": 4}})
    bare = bare.model_copy(update={"llm": bare.llm.model_copy(update={"critique_model": None})})
    scripted_llm.add("GapReport", NO_GAPS)
    services = Services(bare)
    try:
        async with Runner(bare, services) as runner:
            outcome = await runner.run(PROMPT, thread_id="nojudge")
    finally:
        await services.aclose()
    assert outcome.status == "done", outcome.error
    assert outcome.output["rounds"][0].get("judge") is None
    assert any("best-of-4 skipped: no judge" in n for n in outcome.output["notices"])
