"""Metric plugins on their own: fact recall (aliases, then the packaged MiniLM), CLIPScore
(tiny random-init open_clip, only when explicitly allowed), cost from the run output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.settings import Settings
from core.artifacts import ArtifactStore
from evals.config import parse_config
from evals.metrics import (
    ClipScoreMetric,
    CostMetric,
    FactRecallMetric,
    MetricContext,
    MetricUnavailable,
    alias_hit,
    normalize,
    recall_targets,
)
from evals.store import ItemRecord
from evals.suites import Requirement, SuitePrompt


def _ctx(tmp: Path, **metrics: Any) -> MetricContext:
    config = parse_config(
        {
            "suites": ["knowledge-v1"],
            "arms": [{"name": "plain", "kind": "plain"}],
            "out_dir": str(tmp),
            "metrics": metrics,
        }
    )
    return MetricContext(config, Settings(), ArtifactStore(tmp / "artifacts"), None)


PROMPT = SuitePrompt(
    id="phryges",
    prompt="The Paris 2024 Olympic mascot on a café terrace",
    requirements=[
        Requirement(
            id="shape",
            question="Is it a red Phrygian cap?",
            fact="a red Phrygian cap with eyes",
            aliases=["phrygian cap", "bonnet phrygien"],
            kind="knowledge",
        ),
        Requirement(
            id="kangaroo",
            question="Is there a kangaroo?",
            fact="the largest kangaroo species in Australia",
            kind="knowledge",
        ),
        Requirement(
            id="terrace",
            question="Is it a café terrace?",
            fact="café terrace",
            aliases=["cafe"],
            kind="object",
        ),
    ],
)


def _item(gen_prompt: str | None, **kw: Any) -> ItemRecord:
    fields: dict[str, Any] = {"status": "done", **kw}
    return ItemRecord(arm="a", prompt_id="k/phryges", seed=0, gen_prompt=gen_prompt, **fields)


def test_alias_matching_ignores_case_accents_and_partial_words() -> None:
    assert normalize("Café  TERRACE!") == "cafe terrace"
    assert alias_hit("A Bonnet Phrygien, in red", ["phrygian cap", "bonnet phrygien"])
    assert alias_hit("a reddish cap", ["red"]) is None
    assert [r.id for r in recall_targets(PROMPT)] == ["shape", "kangaroo"]  # knowledge first


@pytest.mark.slow  # loads sentence-transformers (torch, transformers): seconds on 2 cores
async def test_fact_recall_uses_aliases_then_minilm_similarity(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, fact_threshold=0.5)
    metric = FactRecallMetric()
    await metric.setup(ctx)
    [(name, value, detail)] = await metric.score(
        _item("a mascot shaped like a red Phrygian cap, next to a red kangaroo"), PROMPT, ctx
    )
    assert name == "fact_recall" and value == 1.0
    assert detail["facts"]["shape"]["by"] == "alias"
    assert detail["facts"]["kangaroo"]["by"] == "minilm"
    assert detail["facts"]["kangaroo"]["similarity"] >= 0.5
    [(_, plain, plain_detail)] = await metric.score(_item(PROMPT.prompt), PROMPT, ctx)
    assert plain == 0.0 and not plain_detail["facts"]["kangaroo"]["hit"]
    [(_, none, why)] = await metric.score(_item(None, status="failed"), PROMPT, ctx)
    assert none is None and "no prompt" in why["skipped"]


@pytest.mark.slow  # imports open_clip and torch
async def test_clipscore_needs_real_weights_unless_told_otherwise(tmp_path: Path) -> None:
    from tests.support.tiny_clip import register_tiny_clip

    name = register_tiny_clip(tmp_path / "clip")
    metric = ClipScoreMetric()
    assert "no CLIP model configured" in (metric.unavailable(_ctx(tmp_path)) or "")
    strict = _ctx(tmp_path, clip_model=name)
    assert "random-init CLIP's scores mean nothing" in (metric.unavailable(strict) or "")
    with pytest.raises(MetricUnavailable, match="unavailable"):
        await metric.setup(_ctx(tmp_path, clip_model="no-such-clip", clip_allow_random=True))

    ctx = _ctx(tmp_path, clip_model=name, clip_allow_random=True)
    assert metric.unavailable(ctx) is None
    await metric.setup(ctx)
    ref = ctx.store.put_image(Image.new("RGB", (40, 40), (200, 30, 30)))
    [(key, value, detail)] = await metric.score(_item("x", image_sha256=ref.sha256), PROMPT, ctx)
    assert key == "clipscore" and value is not None and 0.0 <= value <= 100.0
    assert value == pytest.approx(100 * max(detail["cosine"], 0), abs=1e-3)
    [(_, missing, _)] = await metric.score(_item("x", status="failed"), PROMPT, ctx)
    assert missing is None


async def test_cost_reads_stages_and_usage(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    item = _item(
        "x",
        wall_s=3.5,
        output={
            "stages": [
                {"stage": "research", "elapsed_s": 1.0},
                {"stage": "generate", "elapsed_s": 0.5},
                {"stage": "generate", "elapsed_s": 0.25},
            ],
            "usage": {
                "llm_calls": 3,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "tool_calls": 4,
            },
        },
    )
    rows = {k: (v, d) for k, v, d in await CostMetric().score(item, PROMPT, ctx)}
    assert rows["latency_s"][0] == 3.5
    assert rows["latency_s"][1]["stages"] == {"research": 1.0, "generate": 0.75}
    assert rows["tokens"][0] == 150 and rows["llm_calls"][0] == 3 and rows["tool_calls"][0] == 4
