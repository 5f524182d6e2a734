"""WISE_Verified's score: a VLM judge sees the prompt, its Explanation and the image and gives
a binary score (1: the image shows the knowledge-based meaning and is usable). Per category
(by prompt_id) with the weighted overall the suite's protocol defines (evals/suites.py).

The judge instruction is read from the user's WISE checkout when `[metrics] wise_checkout`
points at one (its evaluation script's instruction constant, parsed, never run), else ours; the
report says which."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from evals.metrics import (
    InstructedMetric,
    KnownAnswer,
    MetricContext,
    Output,
    Scored,
    drawn,
    register_metric,
)
from evals.store import ItemRecord
from evals.suites import Requirement, SuitePrompt

OUR_INSTRUCTION = (
    "You grade images generated for knowledge-based prompts. The prompt describes something "
    "indirectly; the explanation says what it actually means. Look at the image: score 1 when "
    "it clearly shows what the explanation says the prompt means and is a usable picture, "
    "else 0. Depicting the literal words of the prompt without its meaning scores 0. "
    'Reply with only a JSON object: {"score": 1} or {"score": 0}.'
)
_SCORE = re.compile(r'"?score"?\s*[:=]\s*"?([01])(?:\.0)?"?', re.IGNORECASE)
_LAST_BIT = re.compile(r"\b([01])\b")


def parse_binary(text: str) -> float | None:
    """1.0/0.0 from `{"score": 1}`, `score: 0`, a yes/no answer or a last standalone 0/1."""
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            obj = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for key in ("score", "Score", "answer", "consistency"):
                v = obj.get(key)
                if v in (0, 1, "0", "1"):
                    return float(v)
                if isinstance(v, str) and v.lower() in ("yes", "no"):
                    return 1.0 if v.lower() == "yes" else 0.0
    m = _SCORE.search(text)
    if m:
        return float(m.group(1))
    words = text.strip().lower()
    if words.startswith(("yes", "no")):
        return 1.0 if words.startswith("yes") else 0.0
    bits = _LAST_BIT.findall(text)
    return float(bits[-1]) if bits else None


def explanation(prompt: SuitePrompt) -> str:
    for key, value in prompt.meta.items():
        if key.lower() == "explanation" and value:
            return str(value)
    return ""


@register_metric
class WiseMetric(InstructedMetric):
    name = "wise"
    needs = frozenset({"judge", "image"})
    keys = {"wise": True}
    quality = True
    label = "WISE_Verified"
    own_instruction = OUR_INSTRUCTION
    checkout_setting = "wise_checkout"
    instruction_words = ("explanation", "score")
    checkout_label = "the WISE checkout"
    missing = (
        "no judge instruction (a string mentioning Explanation and score) in the WISE checkout"
    )

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        why = explanation(prompt)
        if not why:
            return [(self.name, None, {"skipped": "no Explanation (not a WISE prompt)"})]
        if item.status == "missing":
            return [(self.name, None, {"skipped": item.error or "no image"})]
        if item.status != "done" or not item.image_sha256:
            return [(self.name, 0.0, {"failed": item.error or "no image"})]
        judge: Any = ctx.judge
        png = await asyncio.to_thread(ctx.store.get_bytes, item.image_sha256)
        text = f"Prompt: {prompt.prompt}\nExplanation: {why}"
        value = await judge.ask([png], self.instruction, text, parse_binary, max_tokens=512)
        detail: dict[str, Any] = {"category": prompt.category}
        if value is None:
            detail["unanswered"] = True
        return [(self.name, value, detail)]

    def known_answers(self) -> list[KnownAnswer]:
        prompt = SuitePrompt(
            id="known-wise",
            prompt="Three pieces of the round pastry families share at the Mid-Autumn Festival",
            category="CULTURE",
            requirements=[
                Requirement(id="explanation", question="Does it show mooncakes?", kind="knowledge")
            ],
            meta={
                "Explanation": "Mooncakes: three round, golden-brown pastries with a pressed "
                "pattern on top."
            },
        )
        return [
            KnownAnswer(
                "shows the answer vs the wrong thing",
                prompt,
                Output(image=drawn(3, "#b5651d", label="mooncakes")),
                Output(image=drawn(2, "#3050c0", square=True, label="croissants")),
            )
        ]
