"""intake: check the message, start a turn, and decide whether it asks for a new image or a change
to the current one (chat)."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from agent.stage import Result, StageRun
from core.errors import InputError

SYSTEM = """\
A user is working on an image with you. Decide whether their new message asks for a different
image (kind=new) or a change to the current image (kind=refine; put the change, phrased as an
edit, in instruction). Answer with a JSON object only."""

USER = """\
Current image prompt: {prompt}
New message: {message}"""


class Intent(BaseModel):
    """How a chat message relates to the image already on the thread."""

    kind: Literal["new", "refine"] = Field(
        description="new: a different image; refine: change the last image."
    )
    instruction: str = Field(
        default="", description="For refine: the change, as an edit.", max_length=300
    )


def validate_prompt(text: str | None, max_chars: int) -> str:
    """The one check of user prompts, shared by the CLI (before anything starts) and the graph."""
    prompt = (text or "").strip()
    if not prompt:
        raise InputError("the prompt is empty; say what image you want")
    if "\x00" in prompt:
        raise InputError("the prompt contains a NUL byte; pass plain text")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape).
        raise InputError(
            "the prompt is not valid UTF-8 text; check the terminal's encoding"
        ) from None
    if len(prompt) > max_chars:
        raise InputError(
            f"the prompt is {len(prompt)} characters; the limit is {max_chars} "
            "(GROUNDWORK_AGENT__PROMPT_MAX_CHARS)"
        )
    return prompt


def route(state: dict[str, Any]) -> Literal["refine", "start"]:
    """Policies send a refine to `refine` and a new image to their own first research stage."""
    return "refine" if state.get("intent") == "refine" else "start"


async def intake(run: StageRun) -> Result:
    state = run.state
    message = validate_prompt(state.get("request"), run.settings.agent.prompt_max_chars)
    turn = state.get("turn", 0) + 1
    reset: dict[str, Any] = {
        "turn": turn,
        "rounds": [],
        "round": 0,
        "tool_calls": 0,
        "error": None,
        "repair": None,
        "best_score": None,
        "last_image": None,
        "messages": [],
    }
    if state.get("image") is None or state.get("grounded") is None:
        intent = Intent(kind="new")
    else:
        intent = await run.structured(
            "intake",
            Intent,
            [
                SystemMessage(SYSTEM),
                HumanMessage(USER.format(prompt=state.get("prompt", ""), message=message)),
            ],
        )
    if intent.kind == "refine":
        instruction = intent.instruction.strip() or message
        update = {
            **reset,
            "intent": "refine",
            "edit_instruction": instruction,
            "last_image": state.get("image"),
        }
        return Result(update, f"turn {turn}: refine")
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
    return Result(update, f"turn {turn}: new")
