"""Run an eval: every arm on every prompt and seed, then the metrics, the statistics and the
report. Resumable and parallel:

- results go to `<out_dir>/results.sqlite`, keyed by arm x prompt x seed, committed the moment
  each exists; a crash or Ctrl-C loses nothing done, and a rerun skips what is done (an agent
  run cut midway resumes from its checkpointed stage, in `<out_dir>/checkpoints.sqlite`);
- at most `concurrency` items are in flight (an asyncio semaphore); with the queue backend the
  generator is a Redis queue client, so those items' images fan out over every worker;
- a rich progress bar shows what is done and the time left.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agent.settings import Settings
from core.errors import GroundworkError, InputError
from evals.analysis import Analysis, analyze
from evals.arms import Arm, Produced, build_arm
from evals.config import AgentArm, EvalConfig, ImportedArm, TrainedArm, eval_settings
from evals.judge import Judge, OpenAIJudge
from evals.metrics import METRICS, Metric, MetricContext, MetricUnavailable, PairwiseMetric
from evals.services import SharedServices
from evals.snapshot import SnapshotCache, key_settings
from evals.store import ItemRecord, PairRow, ResultStore, ScoreRow
from evals.suites import Suite, SuitePrompt, load_suite

RESULTS_DB = "results.sqlite"


@dataclass
class EvalResult:
    config: EvalConfig
    out_dir: Path
    db_path: Path
    analysis: Analysis
    report_md: Path | None = None
    report_html: Path | None = None
    notices: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return self.analysis.table()


@dataclass
class Work:
    suite: Suite
    prompt: SuitePrompt
    key: str
    seed: int
    arm: str


def load_suites(config: EvalConfig) -> list[Suite]:
    suites = []
    for ref in config.suite_refs():
        suites.append(load_suite(ref.path, fmt=ref.format, name=ref.name, limit=ref.limit))
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two suites are both named {', '.join(dup)}; give one a name = ...")
    return suites


def _check_meta(store: ResultStore, suites: list[Suite], config: EvalConfig) -> None:
    """A results file holds one version of each suite: mixing versions would pair unequal
    prompts. Arms and seeds may be added later (the analysis uses the current config's)."""
    recorded = store.get_meta("suites", {})
    for suite in suites:
        old = recorded.get(suite.name)
        if old is not None and old != suite.sha256:
            raise InputError(
                f"{store.path} holds results for another version of suite {suite.name} "
                f"(sha256 {old[:12]}, now {suite.sha256[:12]}); use a new out_dir"
            )
        recorded[suite.name] = suite.sha256
    store.set_meta("suites", recorded)
    store.set_meta("config", json.loads(config.model_dump_json()))


async def arun_eval(
    config: EvalConfig,
    *,
    arms: Mapping[str, Arm] | None = None,
    judge: Judge | None = None,
    progress: bool = True,
    console: Console | None = None,
    write_report: bool = True,
) -> EvalResult:
    """Run (or resume) an eval. `arms` and `judge` replace the configured ones by name (tests,
    or systems that are not Groundwork arms)."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    suites = load_suites(config)
    store = ResultStore(out / RESULTS_DB)
    notices: list[str] = []
    try:
        _check_meta(store, suites, config)
        settings = eval_settings(config)
        async with AsyncExitStack() as stack:
            built = await _build(config, settings, suites, arms, stack, notices)
            if judge is None and config.judge.configured() is None:
                judge = OpenAIJudge(config.judge)
            ctx = MetricContext(config, settings, built.shared.store, judge, notices=notices)
            active = await _metrics(config, ctx, store)
            await _run_all(config, suites, built.arms, active, ctx, store, progress, console)
        analysis = analyze_store(store, config, suites)
        result = EvalResult(config, out, store.path, analysis, notices=notices)
        (out / "results.json").write_text(json.dumps(analysis.as_dict(), indent=2, default=str))
        if write_report:
            from evals.report import write_report as write

            result.report_md, result.report_html = write(store, config, suites, analysis)
        return result
    finally:
        store.close()


def run_eval(config: EvalConfig, **kwargs: Any) -> EvalResult:
    """`arun_eval` for synchronous callers."""
    return asyncio.run(arun_eval(config, **kwargs))


def analyze_store(store: ResultStore, config: EvalConfig, suites: list[Suite]) -> Analysis:
    assert config.baseline is not None
    return analyze(
        store,
        arms=[a.name for a in config.arms],
        baseline=config.baseline,
        prompts=[s.key(p) for s in suites for p in s.prompts],
        seeds=config.seed_list(),
        n_boot=config.report.bootstrap,
        seed=config.report.seed,
    )


@dataclass
class _Built:
    shared: SharedServices
    arms: dict[str, Arm]


async def _build(
    config: EvalConfig,
    settings: Settings,
    suites: list[Suite],
    given: Mapping[str, Arm] | None,
    stack: AsyncExitStack,
    notices: list[str],
) -> _Built:
    snapshot: SnapshotCache | None = None
    from core.artifacts import ArtifactStore

    artifact_store = ArtifactStore.from_settings(settings.artifacts)
    keys = key_settings(settings.tools, settings.retrieval.clip_model)
    if config.record is not None:
        snapshot = SnapshotCache(config.record, "record", artifact_store)
        recorded = snapshot.info("key_settings")
        if recorded is not None and recorded != keys:
            snapshot.close()
            raise InputError(_key_mismatch(config.record, recorded, keys, "record into"))
        snapshot.set_info("key_settings", keys)
    elif config.replay is not None:
        snapshot = SnapshotCache(config.replay, "replay", artifact_store)
        recorded = snapshot.info("key_settings")
        if recorded is not None and recorded != keys:
            snapshot.close()
            raise InputError(_key_mismatch(config.replay, recorded, keys, "replay"))
        restored = await asyncio.to_thread(snapshot.restore_blobs)
        notices.append(
            f"replaying {snapshot.count()} recorded tool results from {config.replay} "
            f"({restored} images restored)"
        )
    shared = SharedServices(settings, snapshot)
    stack.push_async_callback(shared.aclose)
    checkpointer = None
    needs_runner = any(
        isinstance(a, AgentArm | TrainedArm) and a.name not in (given or {}) for a in config.arms
    )
    if needs_runner:
        from graphs.build import open_checkpointer

        checkpointer = await stack.enter_async_context(
            open_checkpointer(settings, on_notice=notices.append)
        )
    if any(not isinstance(a, ImportedArm) and a.name not in (given or {}) for a in config.arms):
        await _warm_generator(shared, notices)
    built: dict[str, Arm] = {}
    for arm_config in config.arms:
        if given and arm_config.name in given:
            arm = given[arm_config.name]
        else:
            arm = build_arm(arm_config, settings, shared, checkpointer, suites, config.seed_list())
        await arm.start()
        stack.push_async_callback(arm.close)
        built[arm_config.name] = arm
    return _Built(shared, built)


def _key_mismatch(path: Path, recorded: dict[str, Any], now: dict[str, Any], verb: str) -> str:
    diff = ", ".join(
        f"{k}: recorded {recorded.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(recorded) | set(now))
        if recorded.get(k) != now.get(k)
    )
    return (
        f"cannot {verb} snapshot {path}: its tool settings differ ({diff}); they are part of "
        "every recorded question, so use the recorded values (or record a new snapshot)"
    )


async def _warm_generator(shared: SharedServices, notices: list[str]) -> None:
    """Load the in-process pipeline before the clock starts, so the first item of whichever
    arm runs first does not carry the model load in its latency."""
    warm = getattr(shared.generator(), "warm", None)
    if warm is None:
        return
    try:
        await warm(wait=True)
    except GroundworkError as exc:
        notices.append(f"generator warm-up failed (each item will say why): {exc}")


async def _metrics(config: EvalConfig, ctx: MetricContext, store: ResultStore) -> list[Metric]:
    active: list[Metric] = []
    for name in config.metrics.enabled:
        metric = METRICS[name]()
        reason = metric.unavailable(ctx)
        if reason is None:
            try:
                await metric.setup(ctx)
            except MetricUnavailable as exc:
                reason = str(exc)
        store.set_skip(name, reason)
        if reason is None:
            active.append(metric)
    return active


def _thread_id(arm: str, key: str, seed: int, attempt: int) -> str:
    return f"eval:{arm}:{key}:s{seed}:a{attempt}"


async def _run_all(
    config: EvalConfig,
    suites: list[Suite],
    arms: dict[str, Arm],
    metrics: list[Metric],
    ctx: MetricContext,
    store: ResultStore,
    show: bool,
    console: Console | None,
) -> None:
    seeds = config.seed_list()
    work = [
        Work(suite, prompt, suite.key(prompt), seed, arm)
        for suite in suites
        for prompt in suite.prompts
        for seed in seeds
        for arm in arms
    ]
    per_item = [m for m in metrics if not m.pairwise]
    pairwise = next((m for m in metrics if isinstance(m, PairwiseMetric)), None)
    assert config.baseline is not None
    names = list(arms)
    pairs = (
        list(combinations(names, 2))
        if config.metrics.pairwise == "all"
        else [(a, config.baseline) for a in names if a != config.baseline]
    )
    pair_work = (
        [
            (suite, prompt, suite.key(prompt), seed, a, b)
            for suite in suites
            for prompt in suite.prompts
            for seed in seeds
            for a, b in pairs
        ]
        if pairwise is not None
        else []
    )
    semaphore = asyncio.Semaphore(config.concurrency)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not show,
    )
    with bar:
        task = bar.add_task(f"{config.name}: images", total=len(work))

        async def one(w: Work) -> None:
            async with semaphore:
                await _item(config, arms[w.arm], w, per_item, ctx, store)
            bar.advance(task)

        async with asyncio.TaskGroup() as group:
            for w in work:
                group.create_task(one(w))
        if pairwise is not None and pair_work:
            ptask = bar.add_task(f"{config.name}: pairwise", total=len(pair_work))

            async def pair(item: tuple[Suite, SuitePrompt, str, int, str, str]) -> None:
                _, prompt, key, seed, a, b = item
                async with semaphore:
                    await _pair(pairwise, prompt, key, seed, a, b, ctx, store)
                bar.advance(ptask)

            async with asyncio.TaskGroup() as group:
                for item in pair_work:
                    group.create_task(pair(item))


async def _item(
    config: EvalConfig,
    arm: Arm,
    w: Work,
    metrics: list[Metric],
    ctx: MetricContext,
    store: ResultStore,
) -> None:
    rec = store.item(w.arm, w.key, w.seed)
    retry = rec is not None and (
        rec.status == "started" or (rec.status == "failed" and rec.attempts < config.max_attempts)
    )
    if rec is None or retry:
        resume = bool(
            rec is not None and rec.status == "started" and rec.thread_id and arm.resumable
        )
        attempt = (rec.attempts if rec else 0) + (0 if resume else 1)
        thread_id = (
            rec.thread_id
            if resume and rec and rec.thread_id
            else _thread_id(w.arm, w.key, w.seed, attempt)
        )
        store.put_item(
            ItemRecord(
                arm=w.arm,
                prompt_id=w.key,
                seed=w.seed,
                status="started",
                prompt=w.prompt.prompt,
                thread_id=thread_id,
                attempts=attempt,
            )
        )
        started = time.perf_counter()
        try:
            produced = await arm.produce(
                w.prompt, w.key, w.seed, thread_id=thread_id, resume=resume
            )
            status, error = produced.status, produced.error
        except GroundworkError as exc:
            produced = Produced("failed", error=str(exc))
            status, error = "failed", str(exc)
        wall = round(time.perf_counter() - started, 4)
        rec = ItemRecord(
            arm=w.arm,
            prompt_id=w.key,
            seed=w.seed,
            status=status,  # type: ignore[arg-type]
            prompt=w.prompt.prompt,
            gen_prompt=produced.gen_prompt,
            image_sha256=produced.image_sha256,
            output=produced.output,
            error=error,
            wall_s=wall if produced.timed else produced.output.get("wall_s"),
            thread_id=thread_id,
            attempts=attempt,
        )
        store.put_item(rec)
        # A re-made item invalidates its old scores.
        store.forget_scores(w.arm, w.key, w.seed)
    for metric in metrics:
        if all(store.has_score(k, w.arm, w.key, w.seed) for k in metric.keys):
            continue
        try:
            rows = await metric.score(rec, w.prompt, ctx)
        except GroundworkError as exc:
            # Not stored: the next run of the eval tries again (e.g. the judge was down).
            ctx.notices.append(f"{metric.name} on {w.arm} {w.key} seed {w.seed}: {exc}")
            continue
        for key, value, detail in rows:
            store.put_score(
                ScoreRow(
                    metric=key, arm=w.arm, prompt_id=w.key, seed=w.seed, value=value, detail=detail
                )
            )


async def _pair(
    metric: PairwiseMetric,
    prompt: SuitePrompt,
    key: str,
    seed: int,
    a: str,
    b: str,
    ctx: MetricContext,
    store: ResultStore,
) -> None:
    if store.has_pair(metric.name, a, b, key, seed):
        return
    ra, rb = store.item(a, key, seed), store.item(b, key, seed)
    if ra is None or rb is None or "started" in (ra.status, rb.status):
        return
    try:
        outcome, detail = await metric.compare(ra, rb, prompt, ctx)
    except GroundworkError as exc:
        ctx.notices.append(f"pairwise {a} vs {b} on {key} seed {seed}: {exc}")
        return
    store.put_pair(
        PairRow(
            metric=metric.name,
            arm_a=a,
            arm_b=b,
            prompt_id=key,
            seed=seed,
            outcome=outcome,
            detail=detail,
        )
    )
