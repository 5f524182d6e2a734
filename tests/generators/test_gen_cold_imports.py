"""Cold start with CLIP and warm-up on: the two threads never import torch & co. side by side
(issue 21.3).

The generator's warm-up thread loads the pipeline (diffusers -> transformers) while the CLIP
ranker builds its open_clip model (open_clip -> transformers) on another thread. Without
`core.imports.heavy_imports` this failed every time ("Failed to import
diffusers.pipelines.auto_pipeline", "cannot import name 'PreTrainedModel'"). It only shows in
a fresh interpreter, so the race runs in a subprocess; an audit hook records every first
import of a heavy package by an import statement, which must not happen outside the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_clip import TINY_CLIP_CONFIG, TINY_CLIP_NAME
from tests.support.worker_process import REPO

RACE = r"""
import asyncio, json, sys, threading

HEAVY = ("torch", "transformers", "diffusers", "open_clip")
events = []


def hook(event, args):
    if event == "import" and args[0] in HEAVY:
        events.append((args[0], threading.current_thread().name))


sys.addaudithook(hook)
tiny, clip_cfg, artifacts = sys.argv[1:4]
from core.artifacts import ArtifactStore
from generators.diffusers_backend import DiffusersGenerator
from generators.settings import GeneratorSettings
from retrieval.embedders.open_clip_embedder import OpenClipEmbedder

assert not any(m in sys.modules for m in HEAVY), "not a cold start"
resolve = OpenClipEmbedder._resolve_weights


def register_then_resolve(open_clip, *a, **k):  # the tiny config, once open_clip is in
    open_clip.add_model_config(clip_cfg)
    return resolve(open_clip, *a, **k)


OpenClipEmbedder._resolve_weights = staticmethod(register_then_resolve)
barrier = threading.Barrier(2)
errors = {}


def warm():
    barrier.wait()
    try:
        settings = GeneratorSettings(model=tiny, device="cpu", local_files_only=True)
        g = DiffusersGenerator(settings, ArtifactStore(artifacts))
        asyncio.run(g.warm(wait=True))
        errors["warm_errors"] = str(g.warm_errors)
    except BaseException as e:
        errors["warm"] = f"{type(e).__name__}: {e}"


def rank():
    barrier.wait()
    try:
        OpenClipEmbedder("groundwork-tiny-clip", None, device="cpu")
    except BaseException as e:
        errors["clip"] = f"{type(e).__name__}: {e}"


threads = [threading.Thread(target=warm), threading.Thread(target=rank)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"errors": errors, "events": events}))
"""


@pytest.mark.slow
def test_warm_up_and_clip_ranker_start_cold_together(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / f"{TINY_CLIP_NAME}.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RACE,
            str(tiny_pipeline_dir),
            str(cfg),
            str(tmp_path / "a"),
            "guarded",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == {"warm_errors": "{}"}, out["errors"]
    # Both threads got their heavy packages from heavy_imports (one thread, under its lock):
    # no thread first-imported one with a bare import statement beside the other.
    assert out["events"] == []
