"""Metric validity and failing fast, against the scripted OpenAI-compatible server on loopback:
every metric's known-answer cases pass with a judge that sees the difference and fail with a
broken one (which refuses the run before any item); a configuration error exits 1 before any
item; items failed for configuration are retried after the fix in the same out_dir."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.eval import eval_app
from core.artifacts import ArtifactStore
from evals import arun_eval, parse_config, run_eval
from evals.arms import Produced
from evals.harness import PreflightError
from evals.metrics import METRICS
from evals.store import ResultStore
from evals.suites import SuitePrompt
from evals.validity import MetricInvalid, check_config
from tests.evals.support import write_synthetic_suite
from tests.support.scripted_llm import ScriptedLLM

JUDGED = ["requirements", "pairwise", "geneval_vlm", "wise", "knowgen"]


def _check(config: Any) -> Any:
    from evals.harness import load_suites

    return asyncio.run(check_config(config, load_suites(config)))


def _pixels(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


GOOD = {
    _pixels(case.good.image)
    for name in JUDGED
    for case in METRICS[name]().known_answers()
    if case.good.image is not None
}


def _images(body: dict[str, Any]) -> list[str]:
    out = []
    for m in body.get("messages", []):
        content = m.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                out.append(_pixels(base64.b64decode(data)))
    return out


class JudgeServer(ScriptedLLM):
    """A scripted VLM judge that answers from the images it is sent: `sees` judges them (good
    = one of the cases' good outputs); a broken one answers yes / first / 1 to everything."""

    def __init__(self, sees: bool) -> None:
        super().__init__()
        self.sees = sees

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        schema = self.schema_name(body)
        images = _images(body)
        good = [i in GOOD for i in images] if self.sees else [True] * len(images)
        system = str(body["messages"][0].get("content", ""))
        if schema == "RequirementAnswer":
            answer: Any = {"answer": "yes" if good[0] else "no"}
        elif schema == "PreferenceAnswer":
            answer = {"winner": "first" if good[0] else "second"}
        elif "visual_correctness" in system:
            s = 1 if good[0] else 0
            answer = json.dumps(
                {
                    "rationale": "r",
                    "faithfulness": s,
                    "visual_correctness": s,
                    "text_accuracy": s,
                    "text_accuracy_na": False,
                    "aesthetics": s,
                }
            )
        else:
            answer = json.dumps({"score": 1 if good[0] else 0})
        with self._lock:
            self.script[schema].append(answer)
        return super()._answer(body)


@pytest.fixture
def judge_server(request: pytest.FixtureRequest) -> Any:
    server = JudgeServer(sees=request.param).start()
    yield server
    server.stop()


def _config(tmp: Path, server: ScriptedLLM, **extra: Any) -> dict[str, Any]:
    suite = write_synthetic_suite(tmp / "synthetic-v1.jsonl", n=2)
    return {
        "name": "validity",
        "out_dir": str(tmp / "out"),
        "suites": [str(suite)],
        "arms": [{"name": "plain", "kind": "plain"}],
        "metrics": {"enabled": JUDGED},
        "judge": {"base_url": server.base_url, "model": "scripted-vlm", "max_attempts": 1},
        "settings": {"artifacts": {"root": str(tmp / "artifacts")}},
        **extra,
    }


class _Missing:
    """An arm with nothing to show (no generator is loaded in these tests)."""

    name, kind, resumable = "plain", "synthetic", False

    async def start(self) -> None:
        return None

    async def produce(self, *args: Any, **kwargs: Any) -> Produced:
        return Produced("missing", error="not made in this test")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("judge_server", [True], indirect=True)
def test_known_answer_cases_pass_with_a_judge_that_sees(
    tmp_path: Path, judge_server: JudgeServer
) -> None:
    results, skipped = _check(parse_config(_config(tmp_path, judge_server)))
    assert not skipped
    assert {r.metric for r in results} == set(JUDGED)
    assert all(r.passed for r in results), [r.line() for r in results]
    # a run checks them before its first item, and the report says so
    from evals.report import fairness_lines

    config = parse_config(_config(tmp_path, judge_server))
    run_eval(config, arms={"plain": _Missing()}, progress=False)
    lines = " ".join(fairness_lines(config, []))
    assert "Metric validity: " in lines and "requirements" in lines and "knowgen" in lines


@pytest.mark.parametrize("judge_server", [False], indirect=True)
def test_a_broken_judge_fails_the_cases_and_the_run_is_refused(
    tmp_path: Path, judge_server: JudgeServer
) -> None:
    raw = _config(tmp_path, judge_server)
    results, _ = _check(parse_config(raw))
    assert {r.metric for r in results if not r.passed} == set(JUDGED)

    class NeverRun:
        name, kind, resumable = "plain", "synthetic", False

        async def start(self) -> None:
            return None

        async def produce(self, *args: Any, **kwargs: Any) -> Produced:
            raise AssertionError("no item may run")

        async def close(self) -> None:
            return None

    with pytest.raises(MetricInvalid, match="refusing to start"):
        run_eval(parse_config(raw), arms={"plain": NeverRun()}, progress=False)
    store = ResultStore(tmp_path / "out" / "results.sqlite", readonly=True)
    assert store.items() == []
    store.close()
    # the command says the same and exits 1
    config = tmp_path / "validity.toml"
    config.write_text(_toml(raw))
    result = CliRunner().invoke(eval_app, ["check-metrics", str(config)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_fact_recall_uses_the_answer_not_the_riddle() -> None:
    (case,) = METRICS["fact_recall"]().known_answers()
    from evals.metrics import alias_hit

    aliases = case.prompt.requirements[0].aliases
    assert alias_hit(case.good.gen_prompt or "", aliases) == "mooncakes"
    assert alias_hit(case.bad.gen_prompt or "", aliases) is None


def _toml(raw: dict[str, Any]) -> str:
    judge = raw["judge"]
    return (
        f'name = "validity"\nout_dir = "{raw["out_dir"]}"\nsuites = ["{raw["suites"][0]}"]\n'
        '[[arms]]\nname = "plain"\nkind = "plain"\n'
        f'[settings]\nartifacts = {{root = "{raw["settings"]["artifacts"]["root"]}"}}\n'
        f"[metrics]\nenabled = {json.dumps(raw['metrics']['enabled'])}\n"
        f'[judge]\nbase_url = "{judge["base_url"]}"\nmodel = "{judge["model"]}"\n'
        "max_attempts = 1\n"
    )


# -- failing fast ---------------------------------------------------------------------------


@pytest.mark.parametrize("judge_server", [True], indirect=True)
def test_a_missing_model_exits_1_before_any_item(tmp_path: Path, judge_server: JudgeServer) -> None:
    raw = _config(tmp_path, judge_server)
    raw["arms"] = [
        {"name": "plain", "kind": "plain"},
        {
            "name": "trained",
            "kind": "trained",
            "base_url": judge_server.base_url,
            "model": "Gen-Searcher-8B",  # not served there
        },
    ]
    with pytest.raises(PreflightError, match="trained.*Gen-Searcher-8B"):
        run_eval(parse_config(raw), progress=False)
    assert (
        not (tmp_path / "out" / "results.sqlite").exists()
        or not ResultStore(tmp_path / "out" / "results.sqlite", readonly=True).items()
    )
    config = tmp_path / "bad.toml"
    config.write_text(
        _toml(raw)
        + f'[[arms]]\nname = "trained"\nkind = "trained"\nbase_url = "{judge_server.base_url}"\n'
        'model = "Gen-Searcher-8B"\n'
    )
    result = CliRunner().invoke(eval_app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "Gen-Searcher-8B" in result.output and "nothing was run" in result.output
    store = ResultStore(tmp_path / "out" / "results.sqlite", readonly=True)
    assert store.items() == []
    store.close()


class FlakyArm:
    """Fails every item as a missing model would until `fixed` is set."""

    resumable = False

    def __init__(self, store: ArtifactStore) -> None:
        self.name, self.kind = "agent", "synthetic"
        self.store = store
        self.fixed = False

    async def start(self) -> None:
        return None

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        if not self.fixed:
            return Produced("failed", error="unknown model qwen-x at the policy endpoint")
        ref = self.store.put_image(Image.new("RGB", (4, 4), (len(key), seed, 3)), {})
        return Produced("done", image_sha256=ref.sha256, gen_prompt=prompt.prompt)

    async def close(self) -> None:
        return None


def test_items_failed_for_configuration_retry_after_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_synthetic_suite(tmp_path / "synthetic-v1.jsonl", n=5)
    raw = {
        "name": "retry [/x] [bold]",  # Rich markup in a name is text
        "out_dir": str(tmp_path / "out"),
        "suites": [str(suite)],
        "arms": [{"name": "agent", "kind": "plain"}],
        "max_attempts": 1,
        "limit": 3,
        "metrics": {"enabled": ["cost"]},
        "settings": {"artifacts": {"root": str(tmp_path / "artifacts")}},
    }
    arm = FlakyArm(ArtifactStore(tmp_path / "artifacts"))
    first = asyncio.run(arun_eval(parse_config(raw), arms={"agent": arm}, progress=True))
    assert first.analysis.counts["agent"] == {"failed": 3}  # --limit 3 of 5 prompts
    assert first.arms_without_result() == ["agent"]
    err = capsys.readouterr().err
    assert err.count("seed 0: failed") == 3  # one progress line per item (stderr not a TTY)
    arm.fixed = True
    second = run_eval(parse_config(raw), arms={"agent": arm}, progress=False)
    assert second.analysis.counts["agent"] == {"done": 3}
    assert second.arms_without_result() == []
