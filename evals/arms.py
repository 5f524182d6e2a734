"""The systems under comparison. Each turns (prompt, seed) into one image and says how.

- `plain`: the user's prompt straight to the shared generator.
- `rewrite`: one LLM rewrite of the prompt (no tools), then the generator.
- `agent`: a whole Groundwork run through `graphs.runner.Runner` (planned or react policy).
- `trained`: a trained search policy at an OpenAI-compatible endpoint (Gen-Searcher-8B behind
  vLLM) driving the react policy in its own protocol, with our tools and settings.
- `imported`: images made elsewhere, listed in a manifest.

Every arm uses the eval's generator and seed, so only what the arm does before generation
differs. An arm never raises for a failed run: it returns `failed` with the reason, and the
harness records it (a failed run is a result, not a crash).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field, SecretStr

from agent.settings import RunContext, Settings
from core.errors import GroundworkError, InputError
from core.images import FILE_FORMATS, ImageRejected, decode_image
from evals.config import (
    AgentArm,
    ArmConfig,
    ImportedArm,
    PlainArm,
    RewriteArm,
    TrainedArm,
    check_overrides,
)
from evals.services import ArmServices, SharedServices
from evals.suites import Suite, SuitePrompt
from generators.base import GenerationRequest, GeneratorError


@dataclass
class Produced:
    status: str  # done | failed | missing
    image_sha256: str | None = None
    gen_prompt: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    timed: bool = True
    """False when the wall time says nothing about the arm (images made elsewhere)."""


class Arm(Protocol):
    name: str
    kind: str
    resumable: bool
    """True when a started item can resume where it stopped (a checkpointed thread)."""

    async def start(self) -> None: ...

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced: ...

    async def close(self) -> None: ...


def compact_output(output: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of a run: no observation bodies, just what was asked and
    whether it worked (the run folder keeps everything)."""
    keep = ("request", "prompt", "gaps", "grounded", "image", "notices", "stages", "usage")
    out = {k: output.get(k) for k in keep if output.get(k) is not None}
    out["observations"] = [
        {
            "tool": o.get("tool"),
            "query": str(o.get("query", ""))[:200],
            "ok": o.get("ok"),
            "items": len(o.get("items") or []),
            "cached": o.get("cached", False),
            "error": (o.get("error") or None) and str(o.get("error"))[:200],
            "images": [
                str(i.get("img_id"))
                for i in o.get("items") or []
                if isinstance(i, dict) and i.get("kind") == "image" and i.get("img_id")
            ],
        }
        for o in output.get("observations") or []
        if isinstance(o, dict)
    ]
    out["rounds"] = [
        {
            "round": r.get("round"),
            "action": r.get("action"),
            "score": (r.get("verdict") or {}).get("score"),
            "passed": _passed(r.get("verdict")),
        }
        for r in output.get("rounds") or []
        if isinstance(r, dict)
    ]
    if output.get("error"):
        out["error"] = output["error"]
    return out


def _passed(verdict: Any) -> list[Any]:
    """Each requirement's pass/fail in a critique verdict (what a replay must reproduce)."""
    if not isinstance(verdict, dict):
        return []
    checks = verdict.get("checks") or verdict.get("requirements") or []
    return [c.get("passed", c.get("ok")) for c in checks if isinstance(c, dict)]


def _request(settings: Settings, prompt: str, seed: int, negative: str = "") -> GenerationRequest:
    g = settings.generator
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=g.width,
        height=g.height,
        steps=g.steps,
        guidance_scale=g.guidance_scale,
        seed=seed,
        scheduler=g.scheduler,
    )


async def _generate(
    services: ArmServices, settings: Settings, text: str, seed: int, negative: str = ""
) -> tuple[str, float]:
    started = time.perf_counter()
    result = await services.generator().generate(_request(settings, text, seed, negative))
    return result.image.sha256, round(time.perf_counter() - started, 4)


class _DirectSystem:
    """An arm that calls the generator itself (no graph): nothing to start, nothing to resume."""

    resumable = False

    def __init__(
        self, config: PlainArm | RewriteArm, settings: Settings, shared: SharedServices
    ) -> None:
        self.name: str = config.name
        self.kind: str = config.kind
        self.settings = settings
        self.services = ArmServices(settings, shared)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.services.aclose()


class PlainSystem(_DirectSystem):
    """The baseline: the prompt exactly as the user wrote it."""

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        try:
            sha, elapsed = await _generate(self.services, self.settings, prompt.prompt, seed)
        except GeneratorError as exc:
            return Produced("failed", gen_prompt=prompt.prompt, error=f"generation failed: {exc}")
        stage = {"stage": "generate", "turn": 1, "elapsed_s": elapsed, "summary": f"seed {seed}"}
        return Produced(
            "done",
            image_sha256=sha,
            gen_prompt=prompt.prompt,
            output={"stages": [stage], "usage": {"llm_calls": 0, "tool_calls": 0}},
        )


class RewrittenPrompt(BaseModel):
    """One rewrite of an image prompt, from what the LLM already knows."""

    gen_prompt: str = Field(description="The detailed prompt for the image model.", max_length=1500)
    negative_prompt: str = Field(default="", max_length=300)


IMPORT_MAX_PIXELS = 64_000_000
"""Cap on an imported image's declared size (a decompression-bomb guard)."""

REWRITE_SYSTEM = (
    "You rewrite prompts for a text-to-image model that knows nothing after its training and "
    "cannot read names it has not seen. Replace every named thing (product, event, place, "
    "mascot, cultural item) with a concrete visual description of how it looks, from what you "
    "know; keep every count, colour, relation and quoted text of the prompt exactly. Do not "
    "invent details you are unsure of. Answer with JSON: gen_prompt, negative_prompt."
)


class RewriteSystem(_DirectSystem):
    """One LLM call, no tools: what a model knows without research."""

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        usage = {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "tool_calls": 0}

        def observe(record: dict[str, Any]) -> None:
            usage["llm_calls"] += 1
            usage["prompt_tokens"] += int(record.get("prompt_tokens", 0))
            usage["completion_tokens"] += int(record.get("completion_tokens", 0))

        started = time.perf_counter()
        try:
            rewritten = await self.services.structured(
                "synthesize",
                RewrittenPrompt,
                [SystemMessage(REWRITE_SYSTEM), HumanMessage(prompt.prompt)],
                self.settings,
                observer=observe,
            )
        except GroundworkError as exc:
            return Produced("failed", output={"usage": usage}, error=f"rewrite failed: {exc}")
        rewrite_s = round(time.perf_counter() - started, 4)
        stages = [{"stage": "rewrite", "turn": 1, "elapsed_s": rewrite_s, "summary": ""}]
        try:
            sha, elapsed = await _generate(
                self.services, self.settings, rewritten.gen_prompt, seed, rewritten.negative_prompt
            )
        except GeneratorError as exc:
            return Produced(
                "failed",
                gen_prompt=rewritten.gen_prompt,
                output={"stages": stages, "usage": usage},
                error=f"generation failed: {exc}",
            )
        stages.append({"stage": "generate", "turn": 1, "elapsed_s": elapsed, "summary": ""})
        return Produced(
            "done",
            image_sha256=sha,
            gen_prompt=rewritten.gen_prompt,
            output={
                "stages": stages,
                "usage": usage,
                "grounded": rewritten.model_dump(),
            },
        )


class AgentSystem:
    """A full Groundwork run through the shared Runner: research, synthesis, critique, repair.

    Each (prompt, seed) is one thread; a thread killed midway resumes from its last finished
    stage on the next run of the eval (the checkpoint database lives in the eval's folder).
    """

    resumable = True

    def __init__(
        self,
        config: AgentArm | TrainedArm,
        settings: Settings,
        shared: SharedServices,
        checkpointer: Any,
    ) -> None:
        self.name: str = config.name
        self.kind: str = config.kind
        self.policy = "react" if isinstance(config, TrainedArm) else config.policy
        self.settings = settings
        self.services = ArmServices(settings, shared)
        self.checkpointer = checkpointer
        self.runner: Any = None

    async def start(self) -> None:
        from graphs.runner import Runner

        self.runner = Runner(self.settings, self.services, checkpointer=self.checkpointer)
        await self.runner.__aenter__()

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        request: str | None = prompt.prompt
        written: Path | None = None
        if resume and await self.runner.values(thread_id, self.policy):
            request = None  # continue the thread (or re-read its finished turn)
            # A thread that already wrote its folder keeps that one folder.
            written = await asyncio.to_thread(_folder_of, self.settings.runs_dir, thread_id)
        try:
            outcome = await self.runner.run(
                request,
                thread_id=thread_id,
                policy=self.policy,
                context=RunContext(seed=seed),
                write_folder=written is None,
            )
        except InputError as exc:
            return Produced("failed", error=f"run refused: {exc}")
        output = compact_output(outcome.output)
        run_dir = outcome.run_dir or written
        if run_dir is not None:
            output["run_dir"] = str(run_dir)
        grounded = outcome.output.get("grounded") or {}
        gen_prompt = grounded.get("gen_prompt") if isinstance(grounded, dict) else None
        if outcome.status == "interrupted":
            return Produced(
                "failed",
                gen_prompt=gen_prompt,
                output=output,
                error=f"the run asked a question an eval cannot answer: {outcome.question}",
            )
        if outcome.status != "done" or outcome.image_sha256 is None:
            return Produced(
                "failed", gen_prompt=gen_prompt, output=output, error=outcome.error or "no image"
            )
        return Produced(
            "done", image_sha256=outcome.image_sha256, gen_prompt=gen_prompt, output=output
        )

    async def close(self) -> None:
        try:
            if self.runner is not None:
                await self.runner.__aexit__(None, None, None)
        finally:
            await self.services.aclose()


def _folder_of(runs_dir: Path, thread_id: str) -> Path | None:
    """The finished run folder a thread already wrote (its run.json names the thread)."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return None
    for run_json in root.glob("*/run.json"):
        try:
            if json.loads(run_json.read_text(encoding="utf-8")).get("thread_id") == thread_id:
                return run_json.parent
        except (OSError, ValueError, AttributeError):
            continue
    return None


class ImportedSystem:
    """Images produced elsewhere (another pipeline, a paper's released samples)."""

    resumable = False

    def __init__(
        self, config: ImportedArm, shared: SharedServices, suites: list[Suite], seeds: list[int]
    ) -> None:
        self.name: str = config.name
        self.kind: str = config.kind
        self.manifest = Path(config.manifest)
        self.store = shared.store
        self.seeds = seeds
        self.entries: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        self._bare: dict[str, str] = {}
        for suite in suites:
            for p in suite.prompts:
                self._bare.setdefault(p.id, suite.key(p))

    async def start(self) -> None:
        if not self.manifest.is_file():
            raise InputError(f"arm {self.name}: manifest {self.manifest} not found")
        with self.manifest.open(encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    pid = str(entry["prompt_id"])
                    str(entry["image"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise InputError(
                        f"{self.manifest}:{no}: a manifest line is a JSON object with "
                        f"prompt_id and image ({exc})"
                    ) from exc
                full = pid if "/" in pid else self._bare.get(pid, pid)
                seed = entry.get("seed")
                self.entries.setdefault((full, None if seed is None else int(seed)), []).append(
                    entry
                )

    def _entry(self, key: str, seed: int) -> dict[str, Any] | None:
        exact = self.entries.get((key, seed))
        if exact:
            return exact[0]
        unseeded = self.entries.get((key, None)) or []
        index = self.seeds.index(seed) if seed in self.seeds else -1
        return unseeded[index] if 0 <= index < len(unseeded) else None

    async def produce(
        self, prompt: SuitePrompt, key: str, seed: int, *, thread_id: str, resume: bool
    ) -> Produced:
        entry = self._entry(key, seed)
        if entry is None:
            return Produced("missing", error=f"no image for {key} seed {seed} in {self.manifest}")
        path = Path(entry["image"])
        if not path.is_absolute():
            path = self.manifest.parent / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Produced("failed", error=f"cannot read imported image {path}: {exc}")
        try:
            decoded = decode_image(data, FILE_FORMATS, max_pixels=IMPORT_MAX_PIXELS, what=str(path))
        except ImageRejected as exc:
            return Produced("failed", error=f"{path} is not a readable image: {exc}")
        ref = self.store.put_image(decoded.image, {"imported_from": str(path)})
        output: dict[str, Any] = {k: entry[k] for k in ("stages", "usage", "wall_s") if k in entry}
        return Produced(
            "done",
            image_sha256=ref.sha256,
            gen_prompt=entry.get("gen_prompt") or entry.get("prompt"),
            output=output,
            timed=False,
        )

    async def close(self) -> None:
        return None


def arm_settings(config: ArmConfig, base: Settings) -> Settings:
    """The eval's settings with the arm's overrides (validated: a misspelt key is an error,
    not silently ignored as `Settings.merged` would)."""
    overrides: dict[str, Any] = {k: dict(v) for k, v in config.settings.items()}
    if isinstance(config, TrainedArm):
        # Only the policy role goes to the trained endpoint: helper (checklist, shortening...),
        # critic and judge stay the eval's, so the arms differ only in the policy.
        llm = overrides.setdefault("llm", {})
        llm.setdefault("policy_base_url", config.base_url)
        llm.setdefault("policy_model", config.model)
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise InputError(
                    f"arm {config.name}: environment variable {config.api_key_env} is not set"
                )
            llm["policy_api_key"] = SecretStr(key)
        llm.setdefault("policy_vision", config.vision)
        profile = config.react_profile
        if config.upstream_checkout and "@" not in profile:
            profile = f"{profile}@{config.upstream_checkout}"
        overrides.setdefault("agent", {}).setdefault("react_profile", profile)
    check_overrides(overrides, where=f"arm {config.name}")
    llm = overrides.get("llm") or {}
    if (
        llm.get("base_url")
        and base.llm.critique_model
        and not base.llm.critique_base_url
        and "critique_base_url" not in llm
    ):
        # The critic is the eval's, not the arm's: without this, an arm with its own endpoint
        # would send its critique to that endpoint (critique_base_url falls back to base_url).
        llm["critique_base_url"] = base.llm.base_url
    # Nobody answers clarifying questions in an eval: every arm runs unattended, as `run` does.
    overrides.setdefault("agent", {}).setdefault("ask_questions", False)
    return base.merged(overrides)
