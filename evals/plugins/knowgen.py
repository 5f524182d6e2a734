"""KnowGen's score (Gen-Searcher's benchmark): one VLM call per item with the prompt, the
generated image and the ground-truth image (the latter an input of the judge only, never of an
arm); four scores each in {0, 0.5, 1}: faithfulness, visual correctness, text accuracy (0.5 when
the prompt needs no readable text) and aesthetics; overall 0.1 F + 0.4 V + 0.4 T + 0.1 A. The
suite's protocol folds categories into two groups; the headline is the mean of the group means.

The judge instruction is read from a Gen-Searcher checkout (`[metrics] knowgen_checkout`,
KnowGen_Eval's scorer, parsed, never run) when given, else ours; the report says which."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
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
from evals.suites import SuitePrompt

WEIGHTS = {"faithfulness": 0.1, "visual_correctness": 0.4, "text_accuracy": 0.4, "aesthetics": 0.1}
LEVELS = (0.0, 0.5, 1.0)
MAX_GT_BYTES = 32 * 1024 * 1024

OUR_INSTRUCTION = (
    "You grade an image generated for a prompt that needs real-world knowledge. Image 1 is the "
    "generated image; image 2 is a ground-truth reference, used only for the identity and the "
    "stable visual features of what the prompt names (not for layout). Give four scores, each "
    "exactly 0, 0.5 or 1: faithfulness (every requested element and the scene structure are "
    "present), visual_correctness (the named subjects match the reference's identity and "
    "visual features), text_accuracy (required readable text is present, legible and correct; "
    "when the prompt needs no readable text set text_accuracy_na to true and text_accuracy to "
    "0.5), aesthetics (composition and polish, compared with the reference). Reply with only a "
    'JSON object: {"rationale": "...", "faithfulness": 0, "visual_correctness": 0, '
    '"text_accuracy": 0, "text_accuracy_na": false, "aesthetics": 0}.'
)


def parse_scores(text: str) -> dict[str, float] | None:
    """The four scores (text accuracy 0.5 when N/A); None unless each is 0, 0.5 or 1."""
    body = re.sub(r"^```[a-zA-Z0-9]*\s*|\s*```$", "", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start == -1 or end <= start:
        return None
    raw = re.sub(r",\s*([}\]])", r"\1", body[start : end + 1])
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    out: dict[str, float] = {}
    for key in WEIGHTS:
        if key == "text_accuracy" and obj.get("text_accuracy_na") in (True, "true", "True", 1):
            out[key] = 0.5
            continue
        try:
            value = float(obj.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if value not in LEVELS:
            return None
        out[key] = value
    return out


def overall(scores: dict[str, float]) -> float:
    return round(sum(WEIGHTS[k] * scores[k] for k in WEIGHTS), 6)


def _read_gt(prompt: SuitePrompt) -> bytes | None:
    path = prompt.meta.get("gt_image")
    if not path:
        return None
    p = Path(str(path))
    if not p.is_file() or p.stat().st_size > MAX_GT_BYTES:
        return None
    return p.read_bytes()


@register_metric
class KnowGenMetric(InstructedMetric):
    name = "knowgen"
    needs = frozenset({"judge", "image"})
    keys = {
        "knowgen": True,
        "knowgen_faithfulness": True,
        "knowgen_visual_correctness": True,
        "knowgen_text_accuracy": True,
        "knowgen_aesthetics": True,
    }
    quality = True
    label = "KnowGen"
    own_instruction = OUR_INSTRUCTION
    checkout_setting = "knowgen_checkout"
    instruction_words = ("visual_correctness", "text_accuracy", "aesthetics")
    checkout_label = "the Gen-Searcher checkout"
    missing = "no KnowGen judge instruction in"

    def _none(self, why: str) -> list[Scored]:
        return [(k, None, {"skipped": why}) for k in self.keys]

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        gt = await asyncio.to_thread(_read_gt, prompt)
        if gt is None:
            return self._none("no readable ground-truth image (gt_image)")
        if item.status == "missing":
            return self._none(item.error or "no image")
        if item.status != "done" or not item.image_sha256:
            return [(k, 0.0, {"failed": item.error or "no image"}) for k in self.keys]
        png = await asyncio.to_thread(ctx.store.get_bytes, item.image_sha256)
        judge: Any = ctx.judge
        text = (
            f"Task prompt:\n{prompt.prompt}\n\nImage 1: the generated image (graded).\n"
            "Image 2: the ground-truth reference image."
        )
        scores = await judge.ask([png, gt], self.instruction, text, parse_scores, max_tokens=2048)
        if scores is None:
            return [(k, None, {"unanswered": True}) for k in self.keys]
        detail = {"scores": scores, "group": prompt.category}
        return [
            ("knowgen", overall(scores), detail),
            *[(f"knowgen_{k}", v, {}) for k, v in scores.items()],
        ]

    def known_answers(self) -> list[KnownAnswer]:
        gt = drawn(1, "red")
        prompt = SuitePrompt(
            id="known-knowgen",
            prompt="the red disc emblem of the fixture club, on white",
            category="science_and_knowledge",
        )
        return [
            KnownAnswer(
                "matches the ground truth vs does not",
                prompt,
                Output(image=drawn(1, "red")),
                Output(image=drawn(1, "blue", square=True)),
                reference=gt,
            )
        ]
