"""What reaches the generator: a regional layout plan (schema-validated, drawn in the dossier), and
a prompt within the text encoder's token budget (shortened by the LLM, not cut at the end)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from agent.layout import LayoutPlan, several_subjects
from agent.prompt_fit import Encoder, fit_prompt
from agent.services import Services
from agent.settings import Settings
from agent.stage import StageRun
from generators.base import GenerationRequest
from generators.prompt_budget import PromptBudget
from graphs.runner import Runner
from tests.repair.conftest import NO_GAPS
from tests.support.scripted_llm import ScriptedLLM

THREE = "a red car on the left, a blue bus in the middle and a green tree on the right"
PLAN = {
    "requirements": [
        {"text": "a red car on the left", "kind": "relation"},
        {"text": "a blue bus in the middle", "kind": "relation"},
        {"text": "a green tree on the right", "kind": "relation"},
    ],
    "layout": {
        "split": "columns",
        "regions": [{"prompt": "a red car"}, {"prompt": "a blue bus"}, {"prompt": "a green tree"}],
    },
}
LONG = (
    "a cozy reading nook with a green velvet armchair, a brass floor lamp, stacked old books, "
    "a sleeping grey cat and rain running down the tall window"
)


def _no_critic(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"llm": settings.llm.model_copy(update={"critique_model": None})}
    )


def test_layout_plans_are_validated_by_the_generators_rules() -> None:
    plan = LayoutPlan.model_validate(PLAN["layout"])
    assert plan.to_regional().boxes()[0] == (0.0, 0.0, pytest.approx(1 / 3), 1.0)
    with pytest.raises(ValidationError):  # boxes neither given nor split
        LayoutPlan.model_validate({"regions": [{"prompt": "a"}, {"prompt": "b"}]})
    with pytest.raises(ValidationError):  # one ratio for two regions
        LayoutPlan.model_validate(
            {"split": "rows", "ratios": [1], "regions": [{"prompt": "a"}, {"prompt": "b"}]}
        )
    with pytest.raises(ValidationError):  # x1 < x0
        LayoutPlan.model_validate(
            {
                "regions": [
                    {"prompt": "a", "box": {"x0": 0.5, "y0": 0, "x1": 0.2, "y1": 1}},
                    {"prompt": "b", "box": {"x0": 0, "y0": 0, "x1": 1, "y1": 1}},
                ]
            }
        )
    assert several_subjects(THREE) and not several_subjects("a red apple")


@pytest.mark.slow
async def test_a_three_region_plan_reaches_the_generation_request(
    settings: Settings,
    services: Services,
    scripted_llm: ScriptedLLM,
    requests_seen: list[GenerationRequest],
) -> None:
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", PLAN)
    no_critic = _no_critic(settings)
    services.settings = no_critic
    async with Runner(no_critic, services) as runner:
        outcome = await runner.run(THREE, thread_id="layout")

    assert outcome.status == "done", outcome.error
    # the layout was offered to the LLM as a schema, never parsed from prose
    schema = scripted_llm.calls("PromptPlan")[0]["response_format"]["json_schema"]["schema"]
    assert "layout" in schema["properties"]
    (request,) = requests_seen
    assert request.layout is not None
    assert [r.prompt for r in request.layout.regions] == ["a red car", "a blue bus", "a green tree"]
    assert [round(b[2], 3) for b in request.layout.boxes()] == [0.333, 0.667, 1.0]
    assert request.layout.base_prompt is None  # the grounded prompt stays the base prompt
    assert request.prompt == THREE
    assert outcome.run_dir is not None
    with Image.open(outcome.run_dir / "plan.png") as plan:
        assert plan.format == "PNG"
    dossier = (outcome.run_dir / "dossier.md").read_text()
    assert "### Layout plan" in dossier and "![layout plan](plan.png)" in dossier
    assert "- region 2: a blue bus" in dossier


@pytest.mark.slow
async def test_an_over_budget_prompt_is_shortened_by_the_llm_within_the_limit(
    settings: Settings,
    services: Services,
    scripted_llm: ScriptedLLM,
    requests_seen: list[GenerationRequest],
    tiny_pipeline: Path,
) -> None:
    budget = PromptBudget.from_model(str(tiny_pipeline), local_files_only=True)
    assert budget.max_tokens == 77 and not budget.fits(LONG)
    short = "a reading nook, green velvet armchair, brass lamp, old books, grey cat, rain"
    assert budget.fits(short)
    scripted_llm.add("GapReport", NO_GAPS)
    scripted_llm.add("PromptPlan", {"requirements": [{"text": "a green velvet armchair"}]})
    # the first answer is still too long: the count is fed back and the LLM tries again
    scripted_llm.add("ShortPrompt", {"prompt": LONG.replace("cozy ", "")}, {"prompt": short})
    no_critic = _no_critic(settings)
    services.settings = no_critic
    async with Runner(no_critic, services) as runner:
        outcome = await runner.run(LONG, thread_id="budget")

    assert outcome.status == "done", outcome.error
    (request,) = requests_seen
    assert request.prompt == short and budget.count(request.prompt) <= 77
    assert outcome.output["grounded"]["gen_prompt"] == short
    calls = scripted_llm.calls("ShortPrompt")
    assert len(calls) == 2
    assert "the limit is 77" in calls[1]["messages"][-1]["content"]
    assert "at most 77" in calls[0]["messages"][0]["content"]
    assert any("shortened it to" in n for n in outcome.output["notices"])


@pytest.mark.slow
async def test_when_the_llm_cannot_shorten_the_cut_is_said(
    settings: Settings, services: Services, tiny_pipeline: Path
) -> None:
    budget = PromptBudget.from_model(str(tiny_pipeline), local_files_only=True)
    run = StageRun(
        name="test",
        state={},
        settings=settings,
        services=services,
        runtime=None,
        tracer=services.tracer("t"),
    )
    # nothing is scripted: the endpoint answers an error, the LLM step fails
    text, notices = await fit_prompt(run, LONG, Encoder(budget=budget))
    assert budget.fits(text) and LONG.startswith(text)
    assert len(notices) == 1 and "could not shorten it" in notices[0]
    assert "its end was cut off" in notices[0]
