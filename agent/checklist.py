"""The critic's checklist: requirements (and, when offered, a regional layout) written by a short
structured call for a grounded prompt that no synthesis call wrote them for (a prompt used
without research, a trained policy's answer). Shared by synthesize and critique."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, create_model

from agent.contracts import Checklist, GroundedPrompt, PromptPlan
from agent.layout import LAYOUT_GUIDE
from agent.llm import LLMError
from agent.stage import StageRun

CHECKLIST = """\
a short checklist (at most 6) of things a checker can verify by looking at the image, each
short and concrete, with its kind: entity (what must be there), attribute (colour, material,
shape), count, relation (positions, who does what), text (exact words), style."""

PLAN_SYSTEM = """\
You prepare the check of a generated image. From the user's prompt, the prompt sent to the
image model and the facts, write requirements: {checklist}
{layout}
Answer with a JSON object only."""

PLAN_USER = """\
User's prompt: {prompt}
Prompt sent to the image model: {gen_prompt}
Facts:
{facts}"""


_CHECKLIST_ONLY: type[BaseModel] = create_model("PromptPlan", __base__=Checklist)
"""PromptPlan without the layout, made once (a class per call was kept per call)."""


async def write_checklist(
    run: StageRun, prompt: str, grounded: GroundedPrompt, *, offer_layout: bool
) -> tuple[GroundedPrompt, list[str]]:
    """Requirements (and a layout when offered) for a prompt no synthesis call wrote them for.
    A failed call keeps the rule-made checklist and says so."""
    schema: type[BaseModel] = PromptPlan if offer_layout else _CHECKLIST_ONLY
    facts = "\n".join(f"- {f.claim}" for f in grounded.facts) or "(none)"
    try:
        answer = await run.structured(
            "synthesize",
            schema,
            [
                SystemMessage(
                    PLAN_SYSTEM.format(
                        checklist=CHECKLIST,
                        layout=LAYOUT_GUIDE.format(max_regions=6) if offer_layout else "",
                    )
                ),
                HumanMessage(
                    PLAN_USER.format(prompt=prompt, gen_prompt=grounded.gen_prompt, facts=facts)
                ),
            ],
        )
    except LLMError as exc:
        return grounded, [
            f"the requirement checklist could not be written ({exc}); the "
            "critic checks the prompt's words instead"
        ]
    plan = PromptPlan.model_validate(answer.model_dump())
    update: dict[str, Any] = {
        "requirements": [r.model_copy(update={"origin": "llm"}) for r in plan.requirements]
    }
    if plan.layout is not None:
        update["layout"] = plan.layout
    return grounded.model_copy(update=update), []
