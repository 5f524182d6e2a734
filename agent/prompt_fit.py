"""Prompts that fit the image model's text encoder.

The image model's text encoder reads a fixed number of tokens (77 for CLIP) and silently drops
the rest, so every prompt that reaches the generator is counted with the model's own tokenizer,
and one that does not fit is shortened by the LLM (a short structured call that keeps what
matters), not cut at the end. synthesize, refine, generate and the repair loop all use this one
module; `merge_instruction` puts a requested change first, where a 77-token encoder still
reads it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from agent.contracts import GroundedPrompt
from agent.llm import LLMError
from agent.stage import StageRun
from generators.base import GeneratorError

if TYPE_CHECKING:
    from generators.prompt_budget import PromptBudget


@dataclass
class Encoder:
    """What the generator's text side reads: its token budget (None = unknown, and why) and
    whether it takes regional layouts."""

    budget: PromptBudget | None
    why: str = ""
    regional: bool = False

    @property
    def max_words(self) -> int:
        """Words that safely fit: English averages ~1.3 CLIP/T5 tokens a word."""
        if self.budget is None:
            return 60
        return max(8, min(250, int((self.budget.max_tokens - 2) / 1.3)))


async def encoder(run: StageRun) -> Encoder:
    """The generator's prompt budget and layout support, from its tokenizer files and configs
    (milliseconds; nothing is loaded). Unknown is reported, never guessed."""
    from generators.capabilities import capabilities
    from generators.prompt_budget import prompt_budget

    generator = run.services.generator()
    model = run.settings.generator.model
    budget: PromptBudget | None
    try:
        budget, why = await asyncio.to_thread(prompt_budget, generator, model), ""
    except (GeneratorError, ValueError, OSError) as exc:
        budget, why = None, str(exc)
    try:
        caps = await capabilities(generator, model, settings=run.settings.generator)
        regional = caps.regional_layout
    except (GeneratorError, ValueError, OSError):
        regional = False
    return Encoder(budget=budget, why=why, regional=regional)


class ShortPrompt(BaseModel):
    """A shorter image prompt that keeps what matters."""

    prompt: str = Field(min_length=1, max_length=1500)


SHORTEN = """\
You shorten prompts for a text-to-image model. Its text encoder reads at most {max_tokens}
tokens (about {max_words} words) and silently drops the rest. Rewrite the prompt in at most
{max_words} words: keep the subject, the visual facts (shapes, colours, materials, counts,
exact text to render), the composition and the style; drop filler, repetition and names the
image model cannot know when their look is already described.{first}
Answer with a JSON object only."""

FIRST = " Keep the requested change (the words before the first colon) at the start."


async def fit_prompt(
    run: StageRun, text: str, enc: Encoder, *, what: str = "prompt", change_first: bool = False
) -> tuple[str, list[str]]:
    """`text` within the encoder's budget, and notices. Over budget: the LLM shortens it (with
    the count fed back once); only when the LLM fails is the end cut off, and that is said."""
    budget = enc.budget
    if budget is None or budget.fits(text):
        return text, []
    limit, before = budget.max_tokens, budget.count(text)
    convo: list[BaseMessage] = [
        SystemMessage(
            SHORTEN.format(
                max_tokens=limit,
                max_words=enc.max_words,
                first=FIRST if change_first else "",
            )
        ),
        HumanMessage(f"Prompt ({before} tokens):\n{text}"),
    ]
    failure = ""
    for _ in range(2):
        try:
            short = await run.structured("synthesize", ShortPrompt, convo)
        except LLMError as exc:
            failure = str(exc)
            break
        after = budget.count(short.prompt)
        if after <= limit:
            return short.prompt, [
                f"the {what} was {before} tokens, over the image model's {limit}-token text "
                f"encoder; the LLM shortened it to {after}"
            ]
        failure = f"its shortest answer was still {after} tokens"
        convo += [
            AIMessage(short.model_dump_json()),
            HumanMessage(
                f"That is {after} tokens; the limit is {limit}. Shorter: at most "
                f"{max(4, enc.max_words * limit // after)} words."
            ),
        ]
    cut = budget.cut(text)
    return cut, [
        f"the {what} was {before} tokens, over the image model's {limit}-token text encoder, "
        f"and the LLM could not shorten it ({failure}); its end was cut off: {text[len(cut) :]!r}"
    ]


async def fit_grounded(
    run: StageRun, grounded: GroundedPrompt, enc: Encoder
) -> tuple[GroundedPrompt, list[str]]:
    """The prompt and every region prompt within the image model's token budget."""
    gen_prompt, notices = await fit_prompt(run, grounded.gen_prompt, enc)
    update: dict[str, Any] = {"gen_prompt": gen_prompt}
    if grounded.layout is not None:
        regions = []
        for i, region in enumerate(grounded.layout.regions):
            text, more = await fit_prompt(run, region.prompt, enc, what=f"region {i + 1} prompt")
            notices += more
            regions.append(region.model_copy(update={"prompt": text}))
        update["layout"] = grounded.layout.model_copy(update={"regions": regions})
    return grounded.model_copy(update=update), notices


def merge_instruction(prompt: str, instruction: str) -> str:
    """The change first (CLIP encoders read 77 tokens: an edit at the end can be cut off)."""
    instruction = instruction.strip().rstrip(".")
    if not instruction or instruction.lower() in prompt.lower():
        return prompt
    return f"{instruction}: {prompt}"
