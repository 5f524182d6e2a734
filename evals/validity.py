"""Metric validity: every metric's known-answer cases (a good and a bad output for the same
prompt) run against the configured judges and models. A metric that does not score the good
output above the bad one cannot tell what it claims to measure, and an eval that uses it does
not start (`groundwork eval check-metrics CONFIG` shows the same table without running)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import GroundworkError
from evals.config import EvalConfig
from evals.metrics import KnownAnswer, Metric, MetricContext, PairwiseMetric
from evals.store import ItemRecord
from evals.suites import Suite


class MetricInvalid(GroundworkError):
    """A metric failed its known-answer cases with the configured judge: the run is refused."""


@dataclass
class CaseResult:
    metric: str
    case: str
    good: float | None
    bad: float | None
    passed: bool
    error: str | None = None

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        got = self.error or f"good {self.good}, bad {self.bad}"
        return f"{self.metric}: {self.case}: {verdict} ({got})"


def _record(ctx: MetricContext, arm: str, case: KnownAnswer, good: bool) -> ItemRecord:
    out = case.good if good else case.bad
    sha = None
    if out.image is not None:
        sha = ctx.store.put_bytes(out.image, "image/png", {"known_answer": case.name}).sha256
    return ItemRecord(
        arm=arm,
        prompt_id=case.prompt.id,
        seed=0,
        status="done",
        prompt=case.prompt.prompt,
        gen_prompt=out.gen_prompt,
        image_sha256=sha,
    )


async def _one(metric: Metric, case: KnownAnswer, ctx: MetricContext, tmp: Path) -> CaseResult:
    prompt = case.prompt
    if case.reference is not None:
        ref = tmp / f"{metric.name}-{prompt.id}-reference.png"
        ref.write_bytes(case.reference)
        prompt = prompt.model_copy(update={"meta": {**prompt.meta, "gt_image": str(ref)}})
    good, bad = _record(ctx, "good", case, True), _record(ctx, "bad", case, False)
    try:
        if isinstance(metric, PairwiseMetric):
            outcome, _ = await metric.compare(good, bad, prompt, ctx)
            value = None if outcome is None else float(outcome)
            return CaseResult(metric.name, case.name, value, None, outcome == 1)
        key = case.key or next(iter(metric.keys))
        g = {k: v for k, v, _ in await metric.score(good, prompt, ctx)}.get(key)
        b = {k: v for k, v, _ in await metric.score(bad, prompt, ctx)}.get(key)
    except GroundworkError as exc:
        return CaseResult(metric.name, case.name, None, None, False, str(exc))
    passed = g is not None and b is not None and g > b
    return CaseResult(metric.name, case.name, g, b, passed)


async def run_known_answers(metrics: list[Metric], ctx: MetricContext) -> list[CaseResult]:
    """Each metric's cases, one after another (a scripted judge answers in order)."""
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="gw-known-") as tmp:
        for metric in metrics:
            for case in metric.known_answers():
                results.append(await _one(metric, case, ctx, Path(tmp)))
    return results


def refuse_invalid(results: list[CaseResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "; ".join(r.line() for r in failed)
        raise MetricInvalid(
            f"refusing to start: a metric cannot tell a good output from a bad one with the "
            f"configured judge ({lines}). Fix the judge (model, endpoint, method) or disable "
            "the metric; `groundwork eval check-metrics CONFIG` re-runs the cases"
        )


async def check_config(
    config: EvalConfig, suites: list[Suite]
) -> tuple[list[CaseResult], dict[str, str]]:
    """The known-answer cases of every enabled metric with the configured judge and models,
    without running any arm: (results, metrics skipped with the reason)."""
    from core.artifacts import ArtifactStore
    from evals.config import eval_settings
    from evals.judge import OpenAIJudge
    from evals.metrics import start_metrics

    settings = eval_settings(config)
    judge = OpenAIJudge(config.judge) if config.judge.configured() is None else None
    store = ArtifactStore.from_settings(settings.artifacts)
    ctx = MetricContext(config, settings, store, judge)
    active, reasons = await start_metrics(config, suites, ctx)
    skipped = {name: reason for name, reason in reasons.items() if reason is not None}
    return await run_known_answers(active, ctx), skipped
