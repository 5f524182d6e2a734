"""The harness end to end on synthetic arms of known effect and a deterministic judge:
planted effects are recovered, a killed run resumes to the same table, judge order is swapped,
failures count, metrics without what they need are skipped with a reason."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStore
from core.errors import InputError
from evals import EvalResult, arun_eval, parse_config, run_eval
from evals.stats import Paired
from evals.store import ResultStore
from tests.evals.support import (
    FirstAlwaysJudge,
    Oracle,
    OracleJudge,
    SyntheticArm,
    base_passes,
    bonus,
    synthetic_config,
    write_synthetic_suite,
)


def _arms(tmp: Path, oracle: Oracle, **kw: Any) -> dict[str, SyntheticArm]:
    store = ArtifactStore(tmp / "artifacts")
    return {
        "plain": SyntheticArm("plain", store, oracle, base_passes),
        "agent": SyntheticArm(
            "agent", store, oracle, lambda k, s: base_passes(k, s) + bonus(k, s), **kw
        ),
    }


def _timeless(table: list[dict[str, object]]) -> list[dict[str, object]]:
    return [row for row in table if row.get("metric") != "latency_s"]


def _paired(result: EvalResult, metric: str, arm: str = "agent") -> Paired:
    return next(p for p in result.analysis.paired if p.metric == metric and p.arm == arm)


def test_planted_effect_is_recovered_with_a_ci_that_covers_it_and_excludes_zero(
    tmp_path: Path,
) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl")
    oracle = Oracle()
    config = parse_config(synthetic_config(tmp_path, suite))
    result = run_eval(
        config, arms=_arms(tmp_path, oracle), judge=OracleJudge(oracle), progress=False
    )
    p = _paired(result, "requirements")
    assert p.n == 60
    assert p.lo <= 0.2 <= p.hi, (p.delta, p.lo, p.hi)
    assert p.lo > 0, "a +0.2 effect on 60 prompts must be told apart from none"
    assert p.significant and p.p_wilcoxon is not None and p.p_wilcoxon < 0.01
    # the reported per-arm means are exactly the oracle's pass rates
    truth_base = sum(base_passes(f"synthetic-v1/p{i:03d}", 0) / 5 for i in range(60)) / 60
    base = next(
        s for s in result.analysis.summaries if s.metric == "requirements" and s.arm == "plain"
    )
    assert base.mean == pytest.approx(truth_base)
    # pairwise, asked in both orders: the agent never loses (it meets a superset)
    pw = result.analysis.pairwise[0]
    assert (pw.arm, pw.other) == ("agent", "plain")
    assert pw.losses == 0 and pw.wins > 0 and pw.position_bias == 0
    # cost metrics are lower-is-better and read from the run output
    tools = _paired(result, "tool_calls")
    assert tools.higher_is_better is False and tools.delta == 0
    assert result.report_md is not None and result.report_md.is_file()
    assert result.report_html is not None and result.report_html.is_file()
    saved = json.loads((config.out_dir / "results.json").read_text())
    assert saved["baseline"] == "plain" and saved["prompts"] == 60


def test_no_effect_gives_a_ci_around_zero(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl")
    oracle = Oracle()
    store = ArtifactStore(tmp_path / "artifacts")
    arms = {
        "plain": SyntheticArm("plain", store, oracle, base_passes),
        "agent": SyntheticArm("agent", store, oracle, base_passes),
    }
    config = parse_config(synthetic_config(tmp_path, suite, metrics={"enabled": ["requirements"]}))
    result = run_eval(
        config, arms=arms, judge=OracleJudge(oracle), progress=False, write_report=False
    )
    p = _paired(result, "requirements")
    assert p.delta == 0 and p.lo <= 0 <= p.hi and not p.significant
    assert (p.wins, p.ties, p.losses) == (0, 60, 0)
    assert p.p_wilcoxon is None  # undefined for all-zero deltas, not a fake 1.0


async def test_a_run_cancelled_midway_resumes_to_the_same_table(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=30)
    oracle = Oracle()

    whole = parse_config(synthetic_config(tmp_path / "whole", suite))
    full = await arun_eval(
        whole, arms=_arms(tmp_path / "whole", oracle), judge=OracleJudge(oracle), progress=False
    )

    cut = parse_config(synthetic_config(tmp_path / "cut", suite))
    arms = _arms(tmp_path / "cut", oracle, delay_s=0.002)
    task = asyncio.create_task(
        arun_eval(cut, arms=arms, judge=OracleJudge(oracle), progress=False, write_report=False)
    )
    while arms["agent"].produced < 10:
        await asyncio.sleep(0.001)
    task.cancel()  # what Ctrl-C does to asyncio.run's main task
    with pytest.raises(asyncio.CancelledError):
        await task
    db = ResultStore(cut.out_dir / "results.sqlite", readonly=True)
    done_before = [r for r in db.items() if r.status == "done"]
    db.close()
    assert 0 < len(done_before) < 60, "the cut must land midway"

    resumed_arms = _arms(tmp_path / "cut", oracle)
    resumed = await arun_eval(
        cut, arms=resumed_arms, judge=OracleJudge(oracle), progress=False, write_report=False
    )
    # nothing finished before the cut was made again
    remade = resumed_arms["plain"].produced + resumed_arms["agent"].produced
    assert remade == 60 - len(done_before)
    # everything but wall-clock time (measured, so never equal twice) is identical
    assert _timeless(resumed.table()) == _timeless(full.table())


async def test_rerun_of_a_finished_eval_does_nothing_again(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=8)
    oracle = Oracle()
    config = parse_config(synthetic_config(tmp_path, suite))
    judge = OracleJudge(oracle)
    first = await arun_eval(
        config, arms=_arms(tmp_path, oracle), judge=judge, progress=False, write_report=False
    )
    calls = judge.yes_no_calls
    arms = _arms(tmp_path, oracle)
    again = await arun_eval(config, arms=arms, judge=judge, progress=False, write_report=False)
    assert arms["plain"].produced == arms["agent"].produced == 0
    assert judge.yes_no_calls == calls
    assert _timeless(again.table()) == _timeless(first.table())


async def test_pairwise_is_asked_in_both_orders_and_a_position_biased_judge_ties(
    tmp_path: Path,
) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=10)
    oracle = Oracle()
    config = parse_config(
        synthetic_config(tmp_path, suite, metrics={"enabled": ["requirements", "pairwise"]})
    )
    judge = FirstAlwaysJudge(oracle)
    result = await arun_eval(
        config, arms=_arms(tmp_path, oracle), judge=judge, progress=False, write_report=False
    )
    # every comparison was asked twice, with the images swapped
    asked = judge.prefer_calls
    assert len(asked) == 20
    assert {(b, a) for a, b in asked} == set(asked)
    pw = result.analysis.pairwise[0]
    assert (pw.wins, pw.ties, pw.losses) == (0, 10, 0)
    assert pw.position_bias == 1.0 and pw.win_rate == 0.5


async def test_failed_runs_meet_no_requirement_and_lose_pairwise(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=6)
    oracle = Oracle()
    config = parse_config(synthetic_config(tmp_path, suite, max_attempts=1))
    arms = _arms(tmp_path, oracle, fail_keys={"synthetic-v1/p000", "synthetic-v1/p001"})
    result = await arun_eval(
        config, arms=arms, judge=OracleJudge(oracle), progress=False, write_report=False
    )
    assert result.analysis.counts["agent"] == {"done": 4, "failed": 2}
    db = ResultStore(config.out_dir / "results.sqlite", readonly=True)
    rows = {r.prompt_id: r for r in db.scores("requirements") if r.arm == "agent"}
    pairs = {r.prompt_id: r.outcome for r in db.pairs("pairwise")}
    db.close()
    assert rows["synthetic-v1/p000"].value == 0.0
    assert rows["synthetic-v1/p000"].detail["failed"] == "synthetic failure"
    assert pairs["synthetic-v1/p000"] == -1  # an image beats no image, without asking
    # a rerun with more attempts retries the failed items only
    config2 = parse_config(synthetic_config(tmp_path, suite, max_attempts=2))
    arms2 = _arms(tmp_path, oracle)
    again = await arun_eval(
        config2, arms=arms2, judge=OracleJudge(oracle), progress=False, write_report=False
    )
    assert arms2["agent"].produced == 2 and arms2["plain"].produced == 0
    assert again.analysis.counts["agent"] == {"done": 6}


async def test_metrics_without_what_they_need_are_skipped_with_a_reason(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=4)
    oracle = Oracle()
    config = parse_config(
        synthetic_config(
            tmp_path,
            suite,
            metrics={"enabled": ["requirements", "pairwise", "clipscore", "cost"]},
        )
    )
    result = await arun_eval(config, arms=_arms(tmp_path, oracle), judge=None, progress=False)
    skips = result.analysis.skips
    assert "no VLM judge configured" in skips["requirements"]
    assert "no VLM judge configured" in skips["pairwise"]
    assert "no CLIP model configured" in skips["clipscore"]
    assert "cost" not in skips
    metrics = {s.metric for s in result.analysis.summaries}
    assert "requirements" not in metrics and "latency_s" in metrics  # nothing faked
    assert result.report_md is not None
    assert "no VLM judge configured" in result.report_md.read_text()


def test_three_arms_get_a_bradley_terry_ranking(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=40)
    oracle = Oracle()
    store = ArtifactStore(tmp_path / "artifacts")
    arms = {
        "plain": SyntheticArm("plain", store, oracle, base_passes),
        "agent": SyntheticArm("agent", store, oracle, lambda k, s: base_passes(k, s) + 1),
        "trained": SyntheticArm("trained", store, oracle, lambda k, s: base_passes(k, s) + 2),
    }
    raw = synthetic_config(tmp_path, suite, metrics={"enabled": ["requirements"]})
    raw["arms"].append({"name": "trained", "kind": "plain"})
    result = run_eval(
        parse_config(raw), arms=arms, judge=OracleJudge(oracle), progress=False, write_report=False
    )
    ranking = result.analysis.ranking
    assert [r.arm for r in ranking] == ["trained", "agent", "plain"]
    assert result.analysis.ranking_metric == "requirements"
    assert all(r.lo <= r.strength <= r.hi for r in ranking)
    assert ranking[0].lo > ranking[2].hi  # separated, not just ordered


def test_config_keeps_the_comparison_fair_and_catches_typos(tmp_path: Path) -> None:
    base = {"suites": ["knowledge-v1"], "out_dir": str(tmp_path)}
    with pytest.raises(InputError, match="may not override generator"):
        parse_config(
            {
                **base,
                "arms": [{"name": "a", "kind": "plain", "settings": {"generator": {"steps": 50}}}],
            }
        )
    with pytest.raises(InputError, match="baseline"):
        parse_config({**base, "arms": [{"name": "a", "kind": "plain"}], "baseline": "zz"})
    with pytest.raises(InputError, match="arm names repeat"):
        parse_config({**base, "arms": [{"name": "a", "kind": "plain"}] * 2})
    with pytest.raises(InputError, match="record and replay"):
        parse_config(
            {**base, "arms": [{"name": "a", "kind": "plain"}], "record": "s", "replay": "s"}
        )
    from agent.settings import Settings
    from evals.arms import arm_settings
    from evals.config import AgentArm, TrainedArm

    with pytest.raises(InputError, match="unknown llm setting"):
        arm_settings(AgentArm(name="a", settings={"llm": {"modle": "x"}}), Settings())
    trained = arm_settings(
        TrainedArm(name="t", base_url="http://127.0.0.1:9/v1", model="Gen-Searcher-8B"),
        Settings(),
    )
    assert trained.agent.react_profile == "gen-searcher" and trained.llm.policy_vision
    assert trained.llm.endpoint_for("policy").model == "Gen-Searcher-8B"
    assert trained.llm.endpoint_for("policy").base_url == "http://127.0.0.1:9/v1"
    # only the policy: the helper roles keep the eval's endpoint (here the embedded server)
    assert trained.llm.endpoint_for("checklist").base_url is None
    # the critic stays the eval's even though the arm brings its own endpoint
    with_critic = Settings().merged(
        {"llm": {"base_url": "http://127.0.0.1:8/v1", "critique_model": "vlm"}}
    )
    pinned = arm_settings(
        TrainedArm(name="t", base_url="http://127.0.0.1:9/v1", model="Gen-Searcher-8B"),
        with_critic,
    )
    assert pinned.llm.base_url_for("critique") == "http://127.0.0.1:8/v1"
    assert pinned.llm.base_url_for("policy") == "http://127.0.0.1:9/v1"


def test_a_results_file_refuses_another_version_of_a_suite(tmp_path: Path) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=3)
    oracle = Oracle()
    config = parse_config(synthetic_config(tmp_path, suite, metrics={"enabled": ["cost"]}))
    run_eval(config, arms=_arms(tmp_path, oracle), progress=False, write_report=False)
    write_synthetic_suite(suite, n=4)  # the suite changed under the same name
    with pytest.raises(InputError, match="another version of suite synthetic-v1"):
        run_eval(config, arms=_arms(tmp_path, oracle), progress=False)


def test_imported_arm_reads_a_manifest_and_marks_what_is_missing(tmp_path: Path) -> None:
    from PIL import Image

    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=3)
    imgs = tmp_path / "elsewhere"
    imgs.mkdir()
    lines = []
    for i in range(2):  # p002 has no image
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(imgs / f"{i}.png")
        lines.append(
            json.dumps({"prompt_id": f"p{i:03d}", "image": f"{i}.png", "gen_prompt": f"made {i}"})
        )
    (imgs / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    raw = synthetic_config(tmp_path, suite, metrics={"enabled": ["cost"]})
    raw["arms"] = [
        {"name": "plain", "kind": "imported", "manifest": str(imgs / "manifest.jsonl")},
        {"name": "other", "kind": "imported", "manifest": str(imgs / "manifest.jsonl")},
    ]
    result = run_eval(parse_config(raw), progress=False)
    assert result.analysis.counts["plain"] == {"done": 2, "missing": 1}
    db = ResultStore(Path(raw["out_dir"]) / "results.sqlite", readonly=True)
    item = db.item("plain", "synthetic-v1/p001", 0)
    latency = [r for r in db.scores("latency_s") if r.arm == "plain"]
    db.close()
    assert item is not None and item.gen_prompt == "made 1" and item.image_sha256
    # images made elsewhere have no latency here: reported as unknown, not as ~0 s
    assert all(r.value is None for r in latency)
    assert all(math.isnan(s.mean) for s in result.analysis.summaries if s.metric == "latency_s")
