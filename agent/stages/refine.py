"""refine (chat): apply a requested change to the current grounded prompt, keeping the rest.

A weak model's rewrite often drops the subject ("make it night" -> "a night sky"); a rewrite that
loses most of the previous prompt's content words falls back to the previous prompt with the
change merged in, and says so.

The revised prompt is kept within the image model's token budget (agent/prompt_fit.py).
"""

from __future__ import annotations

import json
import re

from langchain_core.messages import HumanMessage, SystemMessage

from agent.contracts import GroundedPrompt, Requirement, check_references, grounded_schema
from agent.llm import LLMError
from agent.prompt_fit import encoder, fit_prompt, merge_instruction
from agent.stage import Result, StageRun

SYSTEM = """\
You revise a grounded prompt for a text-to-image model after the user asked for a change.
Keep everything the change does not touch, apply the change, keep the reference images that
still apply. Answer with a JSON object only."""

USER = """\
Current grounded prompt: {gen_prompt}
Facts: {facts}
Reference images: {refs}
Requested change: {instruction}"""

KEEP_RATIO = 0.5
"""A rewrite must keep at least this share of the previous prompt's content words."""

_WORD = re.compile(r"[a-z0-9]{4,}")


def content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def keeps_subject(previous: str, rewrite: str) -> bool:
    before = content_words(previous)
    if not before:
        return True
    return len(before & content_words(rewrite)) / len(before) >= KEEP_RATIO


async def refine(run: StageRun) -> Result:
    state = run.state
    previous = GroundedPrompt.model_validate(state.get("grounded") or {})
    instruction = state.get("edit_instruction") or state.get("request") or ""
    notices: list[str] = []
    try:
        answer = await run.structured(
            "refine",
            grounded_schema(False),
            [
                SystemMessage(SYSTEM),
                HumanMessage(
                    USER.format(
                        gen_prompt=previous.gen_prompt,
                        facts=json.dumps([f.claim for f in previous.facts]),
                        refs=", ".join(r.img_id for r in previous.reference_images) or "none",
                        instruction=instruction,
                    )
                ),
            ],
        )
        rewrite = GroundedPrompt.model_validate(answer.model_dump())
    except LLMError as exc:
        notices.append(f"the LLM could not revise the prompt ({exc}); merged the change in")
        rewrite = previous.model_copy(
            update={"gen_prompt": merge_instruction(previous.gen_prompt, instruction)}
        )
    if not keeps_subject(previous.gen_prompt, rewrite.gen_prompt):
        notices.append(
            "the model's rewrite lost the previous prompt's content; used the previous prompt "
            "with the change merged in instead"
        )
        rewrite = previous.model_copy(
            update={"gen_prompt": merge_instruction(previous.gen_prompt, instruction)}
        )
    if not rewrite.requirements:
        rewrite.requirements = previous.requirements
    if instruction and not any(instruction.lower() in q.text.lower() for q in rewrite.requirements):
        # The change itself is what the critic must see done.
        change = Requirement(text=instruction[:200], kind="attribute")
        rewrite.requirements = [*rewrite.requirements[:7], change]
    if rewrite.layout is None and previous.layout is not None:
        rewrite.layout = previous.layout
    enc = await encoder(run)
    fitted, more = await fit_prompt(
        run, rewrite.gen_prompt, enc, change_first=bool(notices), what="revised prompt"
    )
    notices += more
    rewrite = rewrite.model_copy(update={"gen_prompt": fitted})
    grounded, dropped = check_references(
        rewrite, state.get("image_ids") or {}, run.settings.agent.max_references
    )
    # The user's record of what they asked for; the generator gets the merged gen_prompt.
    prompt = f"{state.get('prompt', '')}; {instruction}"
    return Result(
        {
            "grounded": grounded.model_dump(mode="json"),
            "prompt": prompt,
            "notices": notices + dropped,
        },
        grounded.gen_prompt[:80],
    )
