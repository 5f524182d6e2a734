"""intake: check the message, start a turn, and decide whether it asks for a new image or a change
to the current one (chat)."""

from __future__ import annotations

import re
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from agent.llm import LLMError
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


_EDIT = re.compile(
    r"^\s*(please\s+)?(make|change|turn|add|remove|delete|put|give|set|replace|swap|use|move|"
    r"now|instead|more|less|zoom|crop|brighten|darken|recolou?r|without|but|also|try|keep)\b"
    r"|\b(make|turn|render|set|have)\s+(it|them|this|that)\b"
    r"|\b(to|on|in|into|from|of)\s+(it|them|the (image|picture|photo|scene))\b",
    re.IGNORECASE,
)
_NEW = re.compile(
    r"^\s*(new (image|picture|one)|(draw|paint|generate|create|show)( me)? (a|an)\b)", re.I
)


def looks_like_edit(message: str) -> bool:
    """A message that only makes sense as a change to the image on screen: an edit verb first,
    or a pronoun for the image ("make it night", "add snow to it"), and no "new image" cue.
    Weak models call such messages new images and lose the subject; the rule keeps it."""
    if _NEW.search(message):
        return False
    return bool(_EDIT.search(message)) and len(message.split()) <= 12


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
        "image_prompt": None,
    }
    if state.get("image") is None or state.get("grounded") is None:
        intent = Intent(kind="new")
    else:
        try:
            intent = await run.structured(
                "intake",
                Intent,
                [
                    SystemMessage(SYSTEM),
                    HumanMessage(USER.format(prompt=state.get("prompt", ""), message=message)),
                ],
            )
        except LLMError:
            # The rule alone decides: an edit-shaped message refines, anything else is new.
            intent = Intent(kind="refine" if looks_like_edit(message) else "new")
        if intent.kind == "new" and looks_like_edit(message):
            intent = Intent(kind="refine", instruction=message)
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
