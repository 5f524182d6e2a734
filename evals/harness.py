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
import re
import sys
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
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
from evals.arms import Arm, Produced
from evals.config import (
    AgentArm,
    EvalConfig,
    ImportedArm,
    RewriteArm,
    TrainedArm,
    eval_settings,
)
from evals.dispatch import build_arm
from evals.judge import Judge, OpenAIJudge
from evals.metrics import (
    Metric,
    MetricContext,
    PairwiseMetric,
    start_metrics,
)
from evals.services import SharedServices
from evals.snapshot import SnapshotCache, compare_replay, fingerprint, key_settings
from evals.store import RESULTS_DB, ItemRecord, PairRow, ResultStore, ScoreRow
from evals.suites import Suite, SuitePrompt, load_suite


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

    def arms_without_result(self) -> list[str]:
        """Arms that produced no image at all (the CLI exits 1 when there is one)."""
        return [a for a in self.analysis.arms if not self.analysis.counts.get(a, {}).get("done")]


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
        suites.append(
            load_suite(ref.path, fmt=ref.format, name=ref.name, limit=ref.limit, split=ref.split)
        )
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
        if judge is None and config.judge.configured() is None:
            await asyncio.to_thread(check_judge, config)
        await asyncio.to_thread(check_arms, config, settings, set(arms or {}))
        async with AsyncExitStack() as stack:
            built = await _build(config, settings, suites, arms, stack, notices)
            if judge is None and config.judge.configured() is None:
                judge = OpenAIJudge(config.judge)
            ctx = MetricContext(config, settings, built.shared.store, judge, notices=notices)
            active = await _metrics(config, ctx, store, suites)
            await _run_all(config, suites, built.arms, active, ctx, store, progress, console)
            _replay_fingerprints(config, built.shared.snapshot, store)
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
        suites=suites,
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


def _replay_fingerprints(
    config: EvalConfig, snapshot: SnapshotCache | None, store: ResultStore
) -> None:
    """Recording: keep each done item's observations and verdicts in the snapshot. Replaying:
    compare them with this run's, so the report claims determinism only when they match."""
    if snapshot is None:
        return
    mine = {
        f"{r.arm}|{r.prompt_id}|{r.seed}": fingerprint(r.output)
        for r in store.items()
        if r.status == "done" and r.output.get("observations") is not None
    }
    if snapshot.mode == "record":
        recorded = snapshot.info("fingerprints") or {}
        snapshot.set_info("fingerprints", {**recorded, **mine})
    else:
        store.set_meta("replay_check", compare_replay(snapshot.info("fingerprints") or {}, mine))


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


class PreflightError(GroundworkError):
    """An arm's or the judge's endpoint or model is unusable: found before the first item."""


def check_judge(config: EvalConfig) -> None:
    """The judge endpoint answers and serves the configured model (before any item)."""
    from agent.preflight import check_endpoint

    assert config.judge.base_url and config.judge.model
    try:
        check_endpoint(config.judge.base_url, {config.judge.model}, config.judge.api_key(), "judge")
    except InputError as exc:
        raise PreflightError(f"[judge]: {exc}; nothing was run") from exc


def check_arms(config: EvalConfig, settings: Settings, given: set[str]) -> None:
    """Every arm's endpoints and models answer before the first item: a missing model or a
    dead endpoint is one clear error now, not every item's attempts burnt one by one."""
    from agent.preflight import check_endpoint
    from evals.arms import arm_settings

    checked: set[tuple[str, str]] = set()
    for arm in config.arms:
        # Arms that bring their own server (tuned-policy) start it later and check it then.
        if arm.name in given or not isinstance(arm, RewriteArm | AgentArm | TrainedArm):
            continue
        s = arm_settings(arm, settings)
        roles = ["policy"] if isinstance(arm, TrainedArm) else ["analyze", "synthesize"]
        if isinstance(arm, AgentArm) and arm.policy == "react":
            roles.append("policy")
        if s.llm.critique_model:
            roles.append("critique")
        for role in roles:
            endpoint = s.llm.endpoint_for(role)
            if endpoint.base_url is None or (endpoint.base_url, endpoint.model) in checked:
                continue
            checked.add((endpoint.base_url, endpoint.model))
            try:
                check_endpoint(endpoint.base_url, {endpoint.model}, endpoint.api_key, role)
            except InputError as exc:
                raise PreflightError(f"arm {arm.name}: {exc}; nothing was run") from exc


async def _metrics(
    config: EvalConfig, ctx: MetricContext, store: ResultStore, suites: list[Suite]
) -> list[Metric]:
    active, reasons = await start_metrics(config, suites, ctx)
    for name, reason in reasons.items():
        store.set_skip(name, reason)
    store.set_meta("metric_sources", ctx.sources)
    if config.metrics.check:
        await _check_known_answers(active, ctx, store)
    return active


async def _check_known_answers(
    metrics: list[Metric], ctx: MetricContext, store: ResultStore
) -> None:
    """Refuse to start when a metric cannot tell its known good output from the bad one with
    the configured judge; a pass is remembered per (metric, judge) in the results file."""
    from evals.validity import refuse_invalid, run_known_answers

    judge = getattr(ctx.judge, "name", "none")
    passed = store.get_meta("known_answers", {})
    todo = [m for m in metrics if m.known_answers() and passed.get(m.name) != judge]
    results = await run_known_answers(todo, ctx)
    refuse_invalid(results)
    for m in todo:
        passed[m.name] = judge
    store.set_meta("known_answers", passed)


_CONFIG_ERROR = re.compile(
    r"model .{0,80}(not found|does not exist)|unknown model|\b40[134]\b|unauthori[sz]ed|"
    r"api key|connection refused|cannot reach|name or service not known|no such host",
    re.IGNORECASE,
)


def is_config_error(error: str | None) -> bool:
    """A failure the eval's configuration caused (a missing model, a dead endpoint, a refused
    key): such an item is retried after the fix, whatever its attempts."""
    return bool(error and _CONFIG_ERROR.search(error))


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
        title = escape(config.name)  # a name such as "x[/y]" is text, not Rich markup
        task = bar.add_task(f"{title}: images", total=len(work))

        out_console = console or Console(stderr=True)
        lines = show and not out_console.is_terminal
        done = 0

        async def one(w: Work) -> None:
            nonlocal done
            async with semaphore:
                await _item(config, arms[w.arm], w, per_item, ctx, store)
            bar.advance(task)
            done += 1
            if lines:
                rec = store.item(w.arm, w.key, w.seed)
                status = rec.status if rec else "?"
                wall = f" {rec.wall_s:.1f}s" if rec and rec.wall_s is not None else ""
                print(
                    f"[{done}/{len(work)}] {w.arm} {w.key} seed {w.seed}: {status}{wall}",
                    file=sys.stderr,
                    flush=True,
                )

        async with asyncio.TaskGroup() as group:
            for w in work:
                group.create_task(one(w))
        if pairwise is not None and pair_work:
            ptask = bar.add_task(f"{title}: pairwise", total=len(pair_work))

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
        rec.status == "started"
        or (
            rec.status == "failed"
            and (rec.attempts < config.max_attempts or rec.output.get("failure") == "config")
        )
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
            # An arm sees the prompt without the judge-only fields (a ground-truth image).
            produced = await arm.produce(
                w.prompt.for_arm(), w.key, w.seed, thread_id=thread_id, resume=resume
            )
            status, error = produced.status, produced.error
            if status == "failed" and is_config_error(error):
                produced.output["failure"] = "config"
        except InputError as exc:
            produced = Produced("failed", error=str(exc), output={"failure": "config"})
            status, error = "failed", str(exc)
        except GroundworkError as exc:
            produced = Produced("failed", error=str(exc))
            status, error = "failed", str(exc)
        wall = round(time.perf_counter() - started, 4)
        if resume and produced.timed:
            # A resumed item's latency is its whole time: the stages it ran before the cut.
            stage_s = sum(
                float(e.get("elapsed_s") or 0.0)
                for e in produced.output.get("stages") or []
                if isinstance(e, dict)
            )
            wall = round(max(wall, stage_s), 4)
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
