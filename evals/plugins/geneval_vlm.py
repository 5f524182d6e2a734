"""GenEval-VLM: GenEval's task file scored by VLM yes/no questions. An image is correct when
every question of its prompt passes (GenEval's per-image rule); the suite's protocol reports the
per-tag accuracies and their mean. GenEval itself uses an object detector plus CLIP for colour:
this is a different instrument, never comparable to the GenEval leaderboard."""

from __future__ import annotations

import asyncio

from evals.metrics import (
    KnownAnswer,
    Metric,
    MetricContext,
    Scored,
    count_case,
    register_metric,
)
from evals.store import ItemRecord
from evals.suites import SuitePrompt


@register_metric
class GenEvalVLMMetric(Metric):
    name = "geneval_vlm"
    needs = frozenset({"judge", "image"})
    keys = {"geneval_vlm": True}
    quality = True
    label = "GenEval-VLM (VLM questions; not the detector-based GenEval score)"

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        if not prompt.requirements:
            return [(self.name, None, {"skipped": "the prompt has no questions"})]
        if item.status == "missing":
            return [(self.name, None, {"skipped": item.error or "no image"})]
        if item.status != "done" or not item.image_sha256:
            return [(self.name, 0.0, {"failed": item.error or "no image", "tag": prompt.category})]
        assert ctx.judge is not None
        png = await asyncio.to_thread(ctx.store.get_bytes, item.image_sha256)
        answers = await asyncio.gather(
            *(ctx.judge.yes_no(png, r.question, prompt.prompt) for r in prompt.requirements)
        )
        verdicts = {r.id: a for r, a in zip(prompt.requirements, answers, strict=True)}
        detail = {"verdicts": verdicts, "tag": prompt.category}
        if any(a is False for a in answers):
            return [(self.name, 0.0, detail)]
        if any(a is None for a in answers):
            return [(self.name, None, {**detail, "unanswered": True})]
        return [(self.name, 1.0, detail)]

    def known_answers(self) -> list[KnownAnswer]:
        return [count_case()]
