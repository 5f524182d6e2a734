"""Synthetic arms of known quality and deterministic judges, for the harness's own tests.

A synthetic arm makes a tiny distinct image per (arm, prompt, seed) and decides, by a seeded
rule, which of the prompt's requirements that image "meets"; the scripted judge reads that
decision back from the image's hash. So the true effect between two arms is planted and known,
and every number the harness reports can be checked against it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.artifacts import ArtifactStore
from evals.arms import Produced
from evals.judge import Preference
from evals.suites import SuitePrompt

N_REQ = 5


def write_synthetic_suite(path: Path, n: int = 60, n_req: int = N_REQ) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            record = {
                "id": f"p{i:03d}",
                "prompt": f"synthetic prompt number {i}",
                "requirements": [
                    {
                        "id": f"r{j}",
                        "question": f"Does the image show detail {j} of prompt {i}?",
                        "fact": f"detail {j}",
                        "aliases": [f"detail {j}"],
                        "kind": "knowledge",
                    }
                    for j in range(n_req)
                ],
            }
            f.write(json.dumps(record) + "\n")
    return path


class Oracle:
    """What each synthetic image truly shows: image sha256 -> requirement ids it meets."""

    def __init__(self) -> None:
        self.meets: dict[str, set[str]] = {}

    def sha_of(self, png: bytes) -> str:
        return hashlib.sha256(png).hexdigest()


def base_passes(key: str, seed: int, n_req: int = N_REQ) -> int:
    """How many requirements the baseline meets for this prompt: 1..3, seeded by the key."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{key}/{seed}".encode()).hexdigest()[:8], 16))
    return int(rng.integers(1, 4))


def bonus(key: str, seed: int) -> int:
    """0, 1 or 2 extra requirements (mean 1 of 5 = +0.2 pass rate)."""
    rng = np.random.default_rng(int(hashlib.sha256(f"bonus/{key}".encode()).hexdigest()[:8], 16))
    return int(rng.integers(0, 3))


class SyntheticArm:
    resumable = False

    def __init__(
        self,
        name: str,
        store: ArtifactStore,
        oracle: Oracle,
        passes: Callable[[str, int], int],
        *,
        delay_s: float = 0.0,
        fail_keys: set[str] | None = None,
        gen_prompt: Callable[[SuitePrompt], str] | None = None,
    ) -> None:
        self.name = name
        self.kind = "synthetic"
        self.store = store
        self.oracle = oracle
        self.passes = passes
        self.delay_s = delay_s
        self.fail_keys = fail_keys or set()
        self.gen_prompt = gen_prompt
        self.produced = 0

    async def start(self) -> None:
        return None

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.produced += 1
        text = self.gen_prompt(prompt) if self.gen_prompt else prompt.prompt
        if key in self.fail_keys:
            return Produced("failed", gen_prompt=text, error="synthetic failure")
        digest = hashlib.sha256(f"{self.name}/{key}/{seed}".encode()).digest()
        image = Image.new("RGB", (16, 16), (digest[0], digest[1], digest[2]))
        image.putpixel((0, 0), (digest[3], digest[4], digest[5]))
        ref = self.store.put_image(image, {"synthetic": self.name})
        k = min(self.passes(key, seed), len(prompt.requirements))
        self.oracle.meets[ref.sha256] = {r.id for r in prompt.requirements[:k]}
        stages = [
            {"stage": "research", "turn": 1, "elapsed_s": 0.5 if self.name != "plain" else 0.0},
            {"stage": "generate", "turn": 1, "elapsed_s": 0.25},
        ]
        usage = {"llm_calls": 2, "prompt_tokens": 100, "completion_tokens": 20, "tool_calls": 3}
        return Produced(
            "done",
            image_sha256=ref.sha256,
            gen_prompt=text,
            output={"stages": stages, "usage": usage},
        )

    async def close(self) -> None:
        return None


class OracleJudge:
    """Answers from the oracle: deterministic, never wrong, never position-biased."""

    name = "oracle"

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.yes_no_calls = 0
        self.prefer_calls: list[tuple[str, str]] = []

    def _req_id(self, question: str) -> str:
        return "r" + question.split("detail ")[1].split(" ")[0]

    async def yes_no(self, image_png: bytes, question: str, prompt: str) -> bool | None:
        self.yes_no_calls += 1
        return self._req_id(question) in self.oracle.meets[self.oracle.sha_of(image_png)]

    async def prefer(self, first_png: bytes, second_png: bytes, prompt: str) -> Preference | None:
        a, b = self.oracle.sha_of(first_png), self.oracle.sha_of(second_png)
        self.prefer_calls.append((a, b))
        na, nb = len(self.oracle.meets[a]), len(self.oracle.meets[b])
        return "first" if na > nb else ("second" if nb > na else "tie")


class FirstAlwaysJudge(OracleJudge):
    """A position-biased judge: prefers whichever image it sees first."""

    async def prefer(self, first_png: bytes, second_png: bytes, prompt: str) -> Preference | None:
        self.prefer_calls.append((self.oracle.sha_of(first_png), self.oracle.sha_of(second_png)))
        return "first"


def synthetic_config(tmp: Path, suite: Path, **extra: Any) -> dict[str, Any]:
    """A config dict whose arms are placeholders replaced by synthetic ones (same names).
    The oracle judge knows only synthetic images, so the known-answer check is off here
    (tests/evals/test_validity.py runs it against the scripted server)."""
    config = {
        "name": "synthetic",
        "out_dir": str(tmp / "out"),
        "suites": [str(suite)],
        "arms": [{"name": "plain", "kind": "plain"}, {"name": "agent", "kind": "plain"}],
        "baseline": "plain",
        "concurrency": 4,
        "metrics": {"enabled": ["requirements", "pairwise", "cost"], "check": False},
        "settings": {"artifacts": {"root": str(tmp / "artifacts")}},
        "report": {"bootstrap": 1000},
        **extra,
    }
    config["metrics"] = {"check": False, **config["metrics"]}
    return config


def chromium_path() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
]


def render_page(page: Path, profile: Path, screenshot: Path, timeout: float = 90) -> str:
    """The page's DOM after load (scripts run), and a screenshot of it, by headless Chromium."""
    import subprocess

    exe = chromium_path()
    assert exe is not None
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*base, "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout
    subprocess.run(
        [*base, f"--screenshot={screenshot}", page.resolve().as_uri()],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return dom


def body_counts(dom: str) -> dict[str, int]:
    """The data-images-* attributes the report's script sets on <body> once images load."""
    import re

    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r'data-images-(\w+)="(\d+)"', body.group(1))
    }
