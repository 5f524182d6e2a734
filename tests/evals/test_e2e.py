"""The whole harness on the real pipeline: the tiny random-init diffusers model, the scripted
OpenAI-compatible server as the arms' LLM and as the VLM judge, research through the real
toolkit (only ddgs faked, pages and images from a loopback server), three arms (plain, agent
planned, agent react) through graphs.runner, every metric, a research snapshot recorded and
replayed, and the HTML report rendered by headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals import arun_eval, parse_config
from evals.store import ResultStore
from tests.evals.support import body_counts, chromium_path, render_page
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import FakeDDGS, WebServer, install_fake_ddgs, png_bytes

pytestmark = pytest.mark.slow

SUITE = [
    {
        "id": "drone",
        "prompt": "a Zephyr X1 drone hovering over a mountain lake at dawn",
        "category": "product",
        "requirements": [
            {
                "id": "colour",
                "question": "Is the drone matte orange?",
                "fact": "a matte orange foldable drone",
                "aliases": ["matte orange"],
                "kind": "knowledge",
            },
            {
                "id": "lake",
                "question": "Is there a mountain lake?",
                "fact": "mountain lake",
                "aliases": ["mountain lake"],
                "kind": "object",
            },
        ],
    },
    {
        "id": "apples",
        "prompt": "three red apples on a wooden table",
        "category": "count",
        "requirements": [
            {
                "id": "count",
                "question": "Are there exactly three red apples?",
                "fact": "three red apples",
                "aliases": ["three red apples"],
                "kind": "count",
            }
        ],
    },
]
REACT_ANSWER = (
    '<answer>{"gen_prompt": "a matte orange foldable quadcopter drone over a mountain lake", '
    '"reference_images": []}</answer>'
)


class Scripted(FakeDDGS):
    """Answers any query about the Zephyr with the loopback page and image; counts calls."""

    hits: dict[str, list[dict[str, Any]]] = {}
    calls = 0

    def text(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        Scripted.calls += 1
        return list(self.hits["text"]) if "zephyr" in query.lower() else []

    def images(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        Scripted.calls += 1
        return list(self.hits["images"]) if "zephyr" in query.lower() else []


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, web: WebServer) -> WebServer:
    page = web.add(
        "/zephyr",
        "text/html; charset=utf-8",
        b"<html><body><article><p>The Zephyr X1 is a matte orange foldable drone with four "
        b"rotors.</p></article></body></html>",
    )
    img = web.add("/zephyr.png", "image/png", png_bytes((230, 120, 20), seed=1))
    hit = {"title": "Zephyr X1 review", "href": page, "body": "A matte orange foldable drone."}
    image = {"title": "Zephyr X1", "image": img, "url": page, "width": 48, "height": 48}
    monkeypatch.setattr(Scripted, "hits", {"text": [hit], "images": [image]})
    monkeypatch.setattr(Scripted, "calls", 0)
    install_fake_ddgs()
    import ddgs

    monkeypatch.setattr(ddgs, "DDGS", Scripted)
    return web


def _script(llm: ScriptedLLM, runs: int) -> None:
    """Enough answers for every LLM role, whatever the order the arms ask in."""
    gap = {
        "kind": "entity",
        "span": "Zephyr X1 drone",
        "why": "a 2026 product",
        "text_queries": ["Zephyr X1 drone design"],
        "image_queries": ["Zephyr X1 drone photo"],
        "needs_reference": True,
    }
    for _ in range(runs):
        llm.add("GapReport", {"gaps": [gap]})
        llm.add(
            "GroundedPrompt",
            {
                "gen_prompt": "a matte orange foldable quadcopter drone over a mountain lake",
                "reference_images": [],
                "facts": [{"claim": "matte orange foldable body", "source_url": ""}],
            },
        )
        llm.add("PromptPlan", {"requirements": [{"text": "an orange drone"}]})
        llm.add("text", REACT_ANSWER)
    for _ in range(runs * 8):
        llm.add("RequirementAnswer", {"answer": "yes"})
        llm.add("PreferenceAnswer", {"winner": "first"})


def _config(tmp: Path, tiny_pipeline: Path, llm: ScriptedLLM, clip: str, **extra: Any) -> Any:
    tmp.mkdir(parents=True, exist_ok=True)
    suite = tmp / "mini-v1.jsonl"
    suite.write_text("".join(json.dumps(p) + "\n" for p in SUITE))
    raw = {
        "name": "e2e",
        "out_dir": str(tmp / "out"),
        "suites": [str(suite)],
        "seeds": [7],
        "concurrency": 1,
        "baseline": "plain",
        "arms": [
            {"name": "plain", "kind": "plain"},
            {"name": "planned", "kind": "agent", "policy": "planned"},
            {"name": "react", "kind": "agent", "policy": "react"},
        ],
        "settings": {
            "llm": {"base_url": llm.base_url, "model": "scripted-llm", "max_retries": 0},
            "generator": {"model": str(tiny_pipeline), "width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp / "artifacts")},
            "tools": {
                "allow_hosts": ["127.0.0.1"],
                "timeout_s": 10,
                "cache_dir": str(tmp / "tool-cache"),
            },
            "retrieval": {"kb_dir": str(tmp / "no-kb")},
        },
        "judge": {"base_url": llm.base_url, "model": "scripted-vlm", "transport_retries": 0},
        "metrics": {
            "clip_model": clip,
            "clip_allow_random": True,
            "fact_threshold": 0.6,
            "check": False,  # the scripted judge says yes to everything (test_validity checks)
        },
        "report": {"bootstrap": 200},
        **extra,
    }
    return parse_config(raw)


async def test_three_arms_through_the_runner_make_a_report_that_renders(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    world: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.tiny_clip import register_tiny_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = register_tiny_clip(tmp_path / "clip")
    _script(scripted_llm, runs=8)
    snap = tmp_path / "research.snap"
    config = _config(tmp_path, tiny_pipeline, scripted_llm, clip, record=str(snap))
    result = await arun_eval(config, progress=False)

    db = ResultStore(config.out_dir / "results.sqlite", readonly=True)
    items = {(r.arm, r.prompt_id): r for r in db.items()}
    assert len(items) == 6
    for (arm, key), rec in items.items():
        assert rec.status == "done", (arm, key, rec.error)
        assert rec.image_sha256 and rec.seed == 7
    planned = items[("planned", "mini-v1/drone")]
    assert planned.gen_prompt and "matte orange" in planned.gen_prompt
    assert planned.output["run_dir"] and Path(planned.output["run_dir"]).is_dir()
    assert planned.output["usage"]["llm_calls"] >= 1
    assert any(o["tool"] == "search" and o["ok"] for o in planned.output["observations"])
    react = items[("react", "mini-v1/drone")]
    assert react.gen_prompt and "matte orange" in react.gen_prompt
    assert items[("plain", "mini-v1/drone")].gen_prompt == SUITE[0]["prompt"]
    # same seed, same generator: the plain arm's image is exactly the one its prompt makes
    metrics = set(db.metrics())
    skips = db.skips()
    db.close()
    assert {"requirements", "clipscore", "fact_recall", "latency_s", "tokens"} <= metrics
    assert skips == {}
    recall = {(p.arm, p.metric): p for p in result.analysis.summaries if p.metric == "fact_recall"}
    assert recall[("planned", "fact_recall")].mean > recall[("plain", "fact_recall")].mean
    assert len(result.analysis.pairwise) == 2  # planned and react, each against plain
    assert [r.arm for r in result.analysis.ranking] and result.analysis.ranking_metric

    assert result.report_md and result.report_md.is_file()
    assert result.report_html and result.report_html.is_file()
    if chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install chromium): render check skipped")
    shot = tmp_path / "e2e-report.png"
    counts = body_counts(render_page(result.report_html, tmp_path / "profile", shot))
    assert counts["total"] == counts["loaded"] >= 6 and counts["broken"] == 0
    assert shot.is_file()


async def test_a_recorded_suite_replays_offline_with_the_same_evidence(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    world: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _script(scripted_llm, runs=8)
    snap = tmp_path / "research.snap"
    lean = {
        "metrics": {"enabled": ["cost"]},
        "arms": [{"name": "planned", "kind": "agent"}],
        "baseline": "planned",
    }
    first = _config(tmp_path / "a", tiny_pipeline, scripted_llm, "none", record=str(snap), **lean)
    await arun_eval(first, progress=False, write_report=False)
    searched = list(world.hits), Scripted.calls
    second = _config(tmp_path / "b", tiny_pipeline, scripted_llm, "none", replay=str(snap), **lean)
    await arun_eval(second, progress=False, write_report=False)
    assert (list(world.hits), Scripted.calls) == searched  # nothing went online
    a = ResultStore(first.out_dir / "results.sqlite", readonly=True)
    b = ResultStore(second.out_dir / "results.sqlite", readonly=True)
    obs_a = a.item("planned", "mini-v1/drone", 7)
    obs_b = b.item("planned", "mini-v1/drone", 7)
    check = b.get_meta("replay_check")
    a.close()
    b.close()
    # the replay reproduced every recorded item's observations, image ids and verdicts, and
    # only then does the report claim determinism
    assert check["compared"] == 2 and check["reproduced"] == 2, check
    assert obs_a is not None and obs_b is not None
    ids = [i for o in obs_a.output["observations"] for i in o["images"]]
    assert ids and ids == [i for o in obs_b.output["observations"] for i in o["images"]]
    from evals.harness import load_suites
    from evals.report import fairness_lines

    assert any("(deterministic)" in line for line in fairness_lines(second, load_suites(second)))
    assert obs_a is not None and obs_b is not None and obs_b.status == "done"
    seen_a = [(o["tool"], o["query"], o["ok"], o["items"]) for o in obs_a.output["observations"]]
    seen_b = [(o["tool"], o["query"], o["ok"], o["items"]) for o in obs_b.output["observations"]]
    assert seen_a and seen_b == seen_a
    assert all(o["cached"] for o in obs_b.output["observations"] if o["ok"])


async def test_trained_arm_speaks_gen_searchers_protocol_with_our_tools(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    world: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = ScriptedLLM(models=("Gen-Searcher-8B",)).start()
    try:
        for _ in range(2):
            policy.add(
                "text",
                '<think>I need to see it.</think><tool_call>{"name": "image_search", '
                '"arguments": {"query": "Zephyr X1 drone", "top_k": 2}}</tool_call>',
                '<think>Done.</think><answer>{"gen_prompt": "a matte orange drone like the '
                'first reference image, over a mountain lake", "reference_images": '
                '[{"img_id": "IMG_001", "note": "orange body"}]}</answer>',
            )
        lean = {
            "metrics": {"enabled": ["cost"]},
            "arms": [
                {
                    "name": "trained",
                    "kind": "trained",
                    "base_url": policy.base_url,
                    "model": "Gen-Searcher-8B",
                }
            ],
            "baseline": "trained",
        }
        config = _config(tmp_path, tiny_pipeline, scripted_llm, "none", **lean)
        await arun_eval(config, progress=False, write_report=False)
    finally:
        policy.stop()
    db = ResultStore(config.out_dir / "results.sqlite", readonly=True)
    rec = db.item("trained", "mini-v1/drone", 7)
    db.close()
    assert rec is not None and rec.status == "done", rec and rec.error
    assert rec.output["observations"][0]["tool"] == "image_search"
    assert rec.output["observations"][0]["ok"]
    assert rec.gen_prompt and "first reference image" not in rec.gen_prompt  # ordinal resolved
    calls = [r for r in policy.requests if r["model"] == "Gen-Searcher-8B"]
    first, second = calls[0]["messages"], calls[1]["messages"]
    assert first[0]["role"] == "system" and "<tools>" in str(first[0]["content"])
    assert "tools" not in calls[0]  # its text protocol, not OpenAI tool calling
    reply = second[-1]
    assert reply["role"] == "user" and "<tool_response>" in str(reply["content"])


async def test_the_trained_arm_endpoint_receives_only_policy_requests(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    world: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _script(scripted_llm, runs=8)
    trained = ScriptedLLM(models=("Gen-Searcher-8B",)).start()
    try:
        for _ in range(8):
            trained.add("text", REACT_ANSWER)
        config = _config(
            tmp_path,
            tiny_pipeline,
            scripted_llm,
            "unused",
            arms=[
                {"name": "plain", "kind": "plain"},
                {
                    "name": "trained",
                    "kind": "trained",
                    "base_url": trained.base_url,
                    "model": "Gen-Searcher-8B",
                    "vision": False,
                },
            ],
            metrics={"enabled": ["cost"]},
        )
        result = await arun_eval(config, progress=False)
    finally:
        trained.stop()
    assert result.analysis.counts["trained"] == {"done": 2}
    assert trained.requests, "the trained endpoint was never asked"
    # every request it got is the policy's: the gen-searcher conversation, no structured
    # output (checklists, prompt shortening and synthesis went to the shared helper)
    for body in trained.requests:
        assert body["_schema"] == "text" and body["model"] == "Gen-Searcher-8B"
        assert body["messages"][0]["role"] == "system"
        assert "<tools>" in str(body["messages"][0]["content"])
    assert all(r["model"] != "Gen-Searcher-8B" for r in scripted_llm.requests)


async def test_a_resumed_item_keeps_one_folder_and_its_whole_latency(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    world: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _script(scripted_llm, runs=4)
    lean = {
        "metrics": {"enabled": ["cost"]},
        "arms": [{"name": "planned", "kind": "agent"}],
        "baseline": "planned",
    }
    config = _config(tmp_path, tiny_pipeline, scripted_llm, "none", **lean)
    await arun_eval(config, progress=False, write_report=False)
    db = ResultStore(config.out_dir / "results.sqlite")
    rec = db.item("planned", "mini-v1/drone", 7)
    assert rec is not None and rec.status == "done" and rec.output["run_dir"]
    # the process died after the run finished but before its result was stored
    db.put_item(rec.model_copy(update={"status": "started", "wall_s": None}))
    db.close()
    await arun_eval(config, progress=False, write_report=False)
    db = ResultStore(config.out_dir / "results.sqlite", readonly=True)
    again = db.item("planned", "mini-v1/drone", 7)
    db.close()
    assert again is not None and again.status == "done"
    assert again.output["run_dir"] == rec.output["run_dir"]
    folders = [
        p
        for p in (config.out_dir / "runs").glob("*/run.json")
        if json.loads(p.read_text()).get("thread_id") == rec.thread_id
    ]
    assert len(folders) == 1
    stage_s = sum(e["elapsed_s"] for e in again.output["stages"])
    # wall_s is stored rounded to 0.1 ms; the stages' sum is not
    assert again.wall_s is not None and again.wall_s >= stage_s - 1e-3
