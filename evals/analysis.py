"""From the results file to the tables: per-arm summaries, paired comparisons with the
baseline, judge win rates and a Bradley-Terry ranking. Reads only the results database, so a
report can be rebuilt, or two runs compared, without rerunning anything.

Seeds of a prompt are averaged before statistics: the prompt is the unit the suite samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evals.metrics import higher_is_better, quality_metrics
from evals.stats import (
    FloatArray,
    Paired,
    Ranked,
    Summary,
    bootstrap_mean_ci,
    bt_ranking,
    paired,
    summarize,
    wins_from_scores,
)
from evals.store import ResultStore
from evals.suites import Suite

PRIMARY_ORDER = ("requirements", "fact_recall", "clipscore")
"""Which quality score ranks the arms first; any other registered quality metric follows."""
COST_ORDER = ("latency_s", "llm_calls", "tokens", "tool_calls")


def _primary() -> list[str]:
    return [*PRIMARY_ORDER, *(m for m in quality_metrics() if m not in PRIMARY_ORDER)]


def _display_key(metric: str) -> tuple[int, str]:
    order = [*_primary(), *COST_ORDER]
    return (order.index(metric) if metric in order else len(order), metric)


@dataclass
class PairwiseSummary:
    arm: str
    other: str
    n: int
    win_rate: float
    lo: float
    hi: float
    wins: int
    ties: int
    losses: int
    position_bias: float
    unanswered: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CategoryRow:
    """One arm on one metric within one category of a suite, with its bootstrap CI."""

    suite: str
    metric: str
    arm: str
    category: str
    n: int
    mean: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OverallRow:
    """A benchmark's weighted overall (its protocol's category weights), CI by resampling
    prompts within each category."""

    suite: str
    protocol: str
    source: str
    metric: str
    arm: str
    value: float
    lo: float
    hi: float
    weights: dict[str, float]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Analysis:
    arms: list[str]
    baseline: str
    prompts: list[str]
    seeds: list[int]
    metrics: list[str]
    summaries: list[Summary] = field(default_factory=list)
    paired: list[Paired] = field(default_factory=list)
    pairwise: list[PairwiseSummary] = field(default_factory=list)
    ranking: list[Ranked] = field(default_factory=list)
    ranking_metric: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skips: dict[str, str] = field(default_factory=dict)
    per_prompt: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """metric -> arm -> per-prompt values (NaN = none), in `prompts` order."""
    categories: list[CategoryRow] = field(default_factory=list)
    overall: list[OverallRow] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """The statistics as plain rows (what a resumed run must reproduce exactly)."""
        rows: list[dict[str, Any]] = [{"kind": "summary", **s.as_dict()} for s in self.summaries]
        rows += [{"kind": "paired", **p.as_dict()} for p in self.paired]
        rows += [{"kind": "pairwise", **p.as_dict()} for p in self.pairwise]
        rows += [
            {"kind": "rank", "metric": self.ranking_metric, **r.as_dict()} for r in self.ranking
        ]
        rows += [{"kind": "category", **c.as_dict()} for c in self.categories]
        rows += [{"kind": "overall", **o.as_dict()} for o in self.overall]
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "arms": self.arms,
            "baseline": self.baseline,
            "prompts": len(self.prompts),
            "seeds": self.seeds,
            "metrics": self.metrics,
            "counts": self.counts,
            "skips": self.skips,
            "ranking_metric": self.ranking_metric,
            "table": self.table(),
        }


def per_prompt_matrix(
    store: ResultStore, metric: str, arms: list[str], prompts: list[str], seeds: list[int]
) -> FloatArray:
    """(n_prompts, n_arms): each cell the mean over seeds of the metric (NaN when none)."""
    index = {p: i for i, p in enumerate(prompts)}
    col = {a: j for j, a in enumerate(arms)}
    wanted = set(seeds)
    sums = np.zeros((len(prompts), len(arms)))
    counts = np.zeros((len(prompts), len(arms)))
    for row in store.scores(metric):
        if row.value is None or row.seed not in wanted:
            continue
        i, j = index.get(row.prompt_id), col.get(row.arm)
        if i is None or j is None:
            continue
        sums[i, j] += row.value
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def analyze(
    store: ResultStore,
    *,
    arms: list[str],
    baseline: str,
    prompts: list[str],
    seeds: list[int],
    n_boot: int = 2000,
    seed: int = 0,
    suites: list[Suite] | None = None,
) -> Analysis:
    metrics = sorted(store.metrics(), key=_display_key)
    result = Analysis(arms, baseline, prompts, seeds, metrics, skips=store.skips())
    wanted_prompts, wanted_seeds = set(prompts), set(seeds)
    for rec in store.items():
        if rec.arm in arms and rec.prompt_id in wanted_prompts and rec.seed in wanted_seeds:
            c = result.counts.setdefault(rec.arm, {})
            c[rec.status] = c.get(rec.status, 0) + 1
    base_j = arms.index(baseline)
    for metric in metrics:
        m = per_prompt_matrix(store, metric, arms, prompts, seeds)
        if np.isnan(m).all():
            continue
        result.per_prompt[metric] = {a: m[:, j].tolist() for j, a in enumerate(arms)}
        hib = higher_is_better(metric)
        for j, arm in enumerate(arms):
            result.summaries.append(summarize(metric, arm, m[:, j], n_boot=n_boot, seed=seed))
            if arm != baseline:
                result.paired.append(
                    paired(
                        metric,
                        arm,
                        baseline,
                        m[:, j],
                        m[:, base_j],
                        n_boot=n_boot,
                        seed=seed,
                        higher_is_better=hib,
                    )
                )
    result.pairwise = _pairwise(store, arms, prompts, seeds, n_boot=n_boot, seed=seed)
    if suites:
        _by_category(result, suites, n_boot=n_boot, seed=seed)
    if len(arms) > 2:
        for metric in _primary():
            if metric in result.per_prompt:
                m = per_prompt_matrix(store, metric, arms, prompts, seeds)
                if higher_is_better(metric) is False:
                    m = -m
                result.ranking = bt_ranking(arms, wins_from_scores(m), n_boot=n_boot, seed=seed)
                result.ranking_metric = metric
                break
    return result


def _by_category(result: Analysis, suites: list[Suite], *, n_boot: int, seed: int) -> None:
    """Per-category scores of every quality metric, and each suite's weighted overall on its
    protocol metric (WISE 0.40/0.12, KnowGen's two groups, GenEval's per-tag mean)."""
    index = {p: i for i, p in enumerate(result.prompts)}
    for suite in suites:
        groups: dict[str, list[int]] = {}
        for p in suite.prompts:
            i = index.get(suite.key(p))
            if i is not None and p.category:
                groups.setdefault(p.category, []).append(i)
        if not groups:
            continue
        protocol = suite.protocol
        for metric, per_arm in result.per_prompt.items():
            if metric not in quality_metrics():
                continue
            for arm in result.arms:
                values = np.asarray(per_arm[arm], dtype=np.float64)
                cat_values = {c: values[ix][~np.isnan(values[ix])] for c, ix in groups.items()}
                for c, v in sorted(cat_values.items()):
                    s = summarize(metric, arm, v, n_boot=n_boot, seed=seed)
                    result.categories.append(
                        CategoryRow(suite.name, metric, arm, c, s.n, s.mean, s.lo, s.hi)
                    )
                if protocol and protocol.metric == metric and protocol.category_weights:
                    row = weighted_overall(
                        cat_values, protocol.category_weights, n_boot=n_boot, seed=seed
                    )
                    if row is not None:
                        value, lo, hi, weights = row
                        result.overall.append(
                            OverallRow(
                                suite.name,
                                protocol.name,
                                protocol.source,
                                metric,
                                arm,
                                value,
                                lo,
                                hi,
                                weights,
                                protocol.note,
                            )
                        )


def weighted_overall(
    cat_values: dict[str, FloatArray],
    weights: dict[str, float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float, dict[str, float]] | None:
    """sum_c w_c x mean_c over the categories with scores (weights renormalised when some are
    absent, e.g. a --limit run), with a percentile CI from resampling within each category."""
    present = {c: w for c, w in weights.items() if c in cat_values and cat_values[c].size}
    total = sum(present.values())
    if not present or total <= 0:
        return None
    w = {c: v / total for c, v in present.items()}
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    point = 0.0
    for c, wc in w.items():
        v = cat_values[c]
        point += wc * float(v.mean())
        draws = rng.integers(0, v.size, size=(n_boot, v.size))
        boot += wc * v[draws].mean(axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi), w


def _pairwise(
    store: ResultStore,
    arms: list[str],
    prompts: list[str],
    seeds: list[int],
    *,
    n_boot: int,
    seed: int,
) -> list[PairwiseSummary]:
    index = {p: i for i, p in enumerate(prompts)}
    wanted = set(seeds)
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for row in store.pairs("pairwise"):
        if (
            row.arm_a in arms
            and row.arm_b in arms
            and row.prompt_id in index
            and row.seed in wanted
        ):
            by_pair.setdefault((row.arm_a, row.arm_b), []).append(row)
    out = []
    for (a, b), rows in sorted(by_pair.items()):
        sums = np.zeros(len(prompts))
        counts = np.zeros(len(prompts))
        wins = ties = losses = unanswered = biased = 0
        for row in rows:
            if row.outcome is None:
                unanswered += 1
                continue
            score = {1: 1.0, 0: 0.5, -1: 0.0}[int(row.outcome)]
            sums[index[row.prompt_id]] += score
            counts[index[row.prompt_id]] += 1
            wins += row.outcome == 1
            ties += row.outcome == 0
            losses += row.outcome == -1
            biased += bool(row.detail.get("position_bias"))
        per_prompt = sums[counts > 0] / counts[counts > 0]
        answered = wins + ties + losses
        if per_prompt.size:
            mean, lo, hi = bootstrap_mean_ci(per_prompt, n_boot=n_boot, rng=seed)
            rate, lo_f, hi_f = float(mean), float(lo), float(hi)
        else:
            rate = lo_f = hi_f = math.nan
        out.append(
            PairwiseSummary(
                a,
                b,
                answered,
                rate,
                lo_f,
                hi_f,
                wins,
                ties,
                losses,
                biased / answered if answered else math.nan,
                unanswered,
            )
        )
    return out
