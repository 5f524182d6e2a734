"""Compare two results files of the same suite(s): the same arm before and after a change (a
new model, a new prompt), paired prompt by prompt over what both runs scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from evals.analysis import per_prompt_matrix
from evals.metrics import higher_is_better
from evals.stats import Paired, paired
from evals.store import ResultStore


@dataclass
class Comparison:
    a: Path
    b: Path
    prompts: int
    seeds: list[int]
    rows: list[Paired] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)


def _keys(store: ResultStore) -> set[tuple[str, int]]:
    return {(r.prompt_id, r.seed) for r in store.items() if r.status != "started"}


def compare_runs(
    a: Path,
    b: Path,
    *,
    arms: list[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Paired deltas B - A per metric for each arm (same name in both, or the `arms` pairs
    (arm in A, arm in B)), over the prompts and seeds both runs have."""
    sa, sb = ResultStore(a, readonly=True), ResultStore(b, readonly=True)
    try:
        suites_a, suites_b = sa.get_meta("suites", {}), sb.get_meta("suites", {})
        common_suites = set(suites_a) & set(suites_b)
        if not common_suites:
            raise InputError(f"{a} and {b} share no suite: nothing to compare")
        for name in sorted(common_suites):
            if suites_a[name] != suites_b[name]:
                raise InputError(
                    f"{a} and {b} used different versions of suite {name} "
                    f"({suites_a[name][:12]} vs {suites_b[name][:12]}); their prompts differ"
                )
        keys = _keys(sa) & _keys(sb)
        prompts = sorted({p for p, _ in keys})
        seeds = sorted({s for _, s in keys})
        arms_a = {r.arm for r in sa.items()}
        arms_b = {r.arm for r in sb.items()}
        pairs = arms or [(x, x) for x in sorted(arms_a & arms_b)]
        for x, y in pairs:
            if x not in arms_a or y not in arms_b:
                raise InputError(f"arm {x!r} not in {a} or arm {y!r} not in {b}")
        result = Comparison(
            a,
            b,
            len(prompts),
            seeds,
            only_a=sorted(arms_a - arms_b),
            only_b=sorted(arms_b - arms_a),
        )
        metrics = sorted(set(sa.metrics()) & set(sb.metrics()))
        for metric in metrics:
            for x, y in pairs:
                ma = per_prompt_matrix(sa, metric, [x], prompts, seeds)[:, 0]
                mb = per_prompt_matrix(sb, metric, [y], prompts, seeds)[:, 0]
                if np.isnan(ma).all() or np.isnan(mb).all():
                    continue
                label = x if x == y else f"{y} (B) vs {x} (A)"
                result.rows.append(
                    paired(
                        metric,
                        label,
                        "A",
                        mb,
                        ma,
                        n_boot=n_boot,
                        seed=seed,
                        higher_is_better=higher_is_better(metric),
                    )
                )
        return result
    finally:
        sa.close()
        sb.close()
