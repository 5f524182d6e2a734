"""No network call on a run's path that the cache can answer (issue 21.4).

A hub model id whose files are in the HF cache, on a machine with no network and without
HF_HUB_OFFLINE set (the case that stalled 5 s on DNS): the pre-flight, the prompt budget (the
tokenizer lookup used to call `snapshot_download` online on every new process and after
every failure), the capabilities and a generation open no socket. A socket audit hook in a
fresh interpreter records every `socket.getaddrinfo` / `socket.connect` and refuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.worker_process import REPO

MODEL = "groundwork-test/tiny-sd"

RUN = r"""
import asyncio, json, sys

calls = []


def audit(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        calls.append([event, repr(args)[:200]])
        raise OSError(f"network disabled by the test ({event})")


sys.addaudithook(audit)
from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from generators.capabilities import capabilities
from generators.diffusers_backend import check_model_available
from generators.factory import make_generator
from generators.prompt_budget import PromptBudget, prompt_budget
from generators.settings import GeneratorSettings, QueueSettings

model, artifacts = sys.argv[1:3]


async def main():
    settings = GeneratorSettings(model=model, device="cpu", steps=2, width=64, height=64)
    check_model_available(model, local_files_only=False)
    gen = make_generator(settings, QueueSettings(), ArtifactStore(artifacts))
    try:
        budgets = [prompt_budget(gen).max_tokens for _ in range(3)]  # before the load
        caps = await capabilities(gen)
        result = await gen.generate(GenerationRequest(prompt="a kite", width=64, height=64))
        budgets.append(prompt_budget(gen).max_tokens)  # from the loaded pipeline
        budgets.append(PromptBudget.from_model(model).max_tokens)
    finally:
        await gen.aclose()
    return {"budgets": budgets, "caps_budget": caps.prompt_token_budget, "sha": result.image.sha256}


out = asyncio.run(main())
print(json.dumps({"calls": calls, **out}))
"""


def fake_hub_cache(root: Path, pipeline: Path) -> Path:
    """`pipeline` laid out as the HF cache holds a downloaded hub model."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{MODEL.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(pipeline, repo / "snapshots" / commit)
    return root


@pytest.mark.slow
def test_a_cached_hub_model_runs_without_network(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    cache = fake_hub_cache(tmp_path / "hub", tiny_pipeline_dir)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "HF_HUB_CACHE": str(cache),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", RUN, MODEL, str(tmp_path / "artifacts")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["calls"] == []
    assert out["budgets"] == [77] * 5 and out["caps_budget"] == 77
    assert out["sha"]
