"""The critique-and-repair loop: a verdict per requirement (malformed ones repaired, never read
as a match), inpaint / img2img / regenerate, the best image kept, every round in the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.contracts import Verdict, verdict_schema
from agent.prompt_fit import merge_instruction
from agent.stages.critique import decide
from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from graphs.runner import Runner
from tests.conftest import groundwork
from tests.repair.conftest import NO_GAPS
from tests.support.scripted_llm import ScriptedLLM

PROMPT = "a red apple on a table"
PLAN = {
    "requirements": [
        {"text": "a red apple", "kind": "entity"},
        {"text": "a wooden table", "kind": "attribute"},
    ]
}


def verdict(*passed: bool, score: float, region: dict[str, float] | None = None) -> dict[str, Any]:
    checks: list[dict[str, Any]] = [
        {"requirement": r["text"], "passed": p, "reason": "" if p else "not visible"}
        for r, p in zip(PLAN["requirements"], passed, strict=True)
    ]
    if region is not None:
        checks[-1]["region"] = region
    return {"checks": checks, "score": score, "edit_instruction": "" if all(passed) else "fix it"}


# -- the verdict schema and the policy, without a model ----------------------------------------


def test_a_verdict_must_have_one_check_per_requirement() -> None:
    two = verdict_schema(2)
    assert two.__name__ == "Verdict"  # the wire name a server's schema cache keys on
    two.model_validate(verdict(True, False, score=0.5))
    with pytest.raises(ValidationError, match="at least 2"):
        two.model_validate({"checks": [{"passed": True}], "score": 0.9})
    with pytest.raises(ValidationError, match="at most 2"):
        two.model_validate({"checks": [{"passed": True}] * 3, "score": 0.9})


@pytest.mark.parametrize(
    "bad",
    [
        {"checks": [{"passed": "yes"}, {"passed": True}], "score": 0.9},  # not a JSON boolean
        {"checks": [{"passed": None}, {"passed": True}], "score": 0.9},
        {"checks": [{"passed": False}, {"passed": True}], "score": 1.0},  # contradicts a failure
        {"checks": [{"passed": True}, {"passed": True}]},  # no score
    ],
)
def test_an_ambiguous_verdict_is_invalid_not_a_match(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        verdict_schema(2).model_validate(bad)


def test_repair_policy() -> None:
    kinds = {"a red apple": "entity", "a wooden table": "attribute"}
    small = {"x0": 0.1, "y0": 0.6, "x1": 0.5, "y1": 0.9}
    action, params = decide(
        Verdict.model_validate(verdict(True, False, score=0.5, region=small)),
        kinds,
        edit_strength=0.5,
    )
    assert action == "inpaint" and params["box"] == small
    large = {"x0": 0.0, "y0": 0.0, "x1": 0.9, "y1": 0.9}
    action, params = decide(
        Verdict.model_validate(verdict(True, False, score=0.5, region=large)),
        kinds,
        edit_strength=0.5,
    )
    assert action == "img2img" and 0.3 <= params["strength"] <= 0.8
    action, _ = decide(
        Verdict.model_validate(verdict(False, False, score=0.1)), kinds, edit_strength=0.5
    )
    assert action == "regenerate"  # the subject itself is wrong: edit nothing, draw again
    action, _ = decide(
        Verdict.model_validate(verdict(True, True, score=0.9)), kinds, edit_strength=0.5
    )
    assert action == "finish"


def test_an_edit_goes_first_in_the_prompt() -> None:
    assert merge_instruction("a red apple on a table", "make the table wooden.") == (
        "make the table wooden: a red apple on a table"
    )
    assert merge_instruction("a red apple", "red apple") == "a red apple"  # already said


# -- whole runs ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_rounds_inpaint_then_match(
    runner: Runner,
    scripted_llm: ScriptedLLM,
    requests_seen: list[GenerationRequest],
    settings: Any,
) -> None:
    box = {"x0": 0.1, "y0": 0.6, "x1": 0.5, "y1": 0.9}
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", PLAN)
    malformed = {"checks": [{"requirement": "a red apple", "passed": True}], "score": 0.5}
    failing = verdict(True, False, score=0.5, region=box)
    failing["edit_instruction"] = "make the table wooden"
    scripted_llm.add("Verdict", malformed, failing, verdict(True, True, score=0.9))

    outcome = await runner.run(PROMPT, thread_id="inpaint")

    assert outcome.status == "done", outcome.error
    rounds = outcome.output["rounds"]
    assert [r["action"] for r in rounds] == ["inpaint", "finish"]
    # the malformed first answer was sent back once, then read
    calls = scripted_llm.calls("Verdict")
    assert len(calls) == 3
    assert "invalid" in json.dumps(calls[1]["messages"][-1])
    assert [c["passed"] for c in rounds[0]["verdict"]["checks"]] == [True, False]
    # round 2 repainted only the boxed area, with the change first in its prompt
    first, second = requests_seen
    assert first.mode == "text2img" and second.mode == "inpaint"
    assert second.init_image == rounds[0]["image"]["image"]["sha256"]
    assert second.prompt.startswith("make the table wooden: ")
    # the critic of round 2 is told the prompt the repaired image was made from
    assert f"Prompt the image was made from: {second.prompt}" in json.dumps(
        calls[2]["messages"][-1], ensure_ascii=False
    )
    store = ArtifactStore.from_settings(settings.artifacts)
    assert second.mask_image is not None
    with store.open_image(second.mask_image) as mask:
        assert mask.size == (64, 64)
        assert mask.getpixel((20, 48)) == 255 and mask.getpixel((50, 10)) == 0
    # the matching image is the run's image; every round's image is in the run folder
    assert outcome.image_sha256 == rounds[1]["image"]["image"]["sha256"]
    assert outcome.run_dir is not None
    for n in (1, 2):
        sha = rounds[n - 1]["image"]["image"]["sha256"]
        assert (outcome.run_dir / f"rounds/round-{n}.png").read_bytes() == store.get_bytes(sha)
    dossier = (outcome.run_dir / "dossier.md").read_text()
    assert "### Round 1 — inpaint" in dossier and "![round 2](rounds/round-2.png)" in dossier
    assert "- [attribute] a wooden table" in dossier  # the checklist
    assert "FAIL: a wooden table" in dossier


@pytest.mark.slow
async def test_no_improvement_stops_with_the_best_image_not_the_last(
    runner: Runner, scripted_llm: ScriptedLLM, requests_seen: list[GenerationRequest]
) -> None:
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", PLAN)
    scripted_llm.add("Verdict", verdict(True, False, score=0.6), verdict(False, False, score=0.4))

    outcome = await runner.run(PROMPT, thread_id="worse")

    assert outcome.status == "done", outcome.error
    rounds = outcome.output["rounds"]
    assert [r["action"] for r in rounds] == ["img2img", "finish"]
    assert rounds[1]["detail"] == "score did not improve"
    best, last = (r["image"]["image"]["sha256"] for r in rounds)
    assert best != last
    assert outcome.image_sha256 == best  # not the last one
    assert outcome.run_dir is not None
    assert (outcome.run_dir / "image.png").read_bytes() == (
        outcome.run_dir / "rounds/round-1.png"
    ).read_bytes()
    assert any("did not improve" in n for n in outcome.output["notices"])
    assert [r.mode for r in requests_seen] == ["text2img", "img2img"]
    assert len(scripted_llm.calls("Verdict")) == 2  # the budget (3) was not what stopped it


@pytest.mark.slow
def test_a_critic_malformed_twice_keeps_the_image_and_exits_0(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", PLAN)
    one_check = {"checks": [{"requirement": "a red apple", "passed": True}], "score": 0.9}
    scripted_llm.add("Verdict", one_check, "Looks great to me, everything matches!")
    env = {
        **gw_env,
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
        "GROUNDWORK_LLM__CRITIQUE_MODEL": "scripted-vlm",
        "GROUNDWORK_LLM__MAX_REPAIRS": "1",  # two answers in all
    }
    proc = groundwork(["run", PROMPT], env, tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the critic was unusable" in " ".join(proc.stdout.split())
    assert len(scripted_llm.calls("Verdict")) == 2
    run_dir = next((tmp_path / "runs").iterdir())
    assert not (run_dir / "INCOMPLETE").exists()
    for name in ("image.png", "dossier.md", "run.json", "trace.jsonl", "rounds/round-1.png"):
        assert (run_dir / name).is_file(), name
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    # never read as a match: no verdict, the round is marked skipped
    assert [(r["action"], r["verdict"]) for r in record["rounds"]] == [("skipped", None)]
    assert any("critic was unusable" in n for n in record["notices"])
    assert (
        "verdict: none (critique skipped or the critic was unusable)"
        in (run_dir / "dossier.md").read_text()
    )
