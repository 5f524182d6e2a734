"""Metrics as plugins. Each says what it needs (a VLM judge, a CLIP model, MiniLM, the run's
output); when that is missing the metric is skipped and the report says why. A metric is never
computed from a stand-in: no judge means no pass rate, not a guessed one.

- `requirements`: VLM judge, one yes/no question per requirement (TIFA/DSG style); the item's
  score is the fraction answered yes. A run that made no image meets no requirement (0).
- `pairwise`: VLM preference between two arms' images, asked in both orders (see judge.py).
- `clipscore`: 100 * max(cos(image, prompt), 0) with an open_clip model (the user's prompt, not
  the grounded one, so an arm cannot score itself against its own rewrite).
- `fact_recall`: does the prompt the generator received name what the requirements need?
  An alias match, else MiniLM similarity to the requirement's fact (text only, offline).
- `cost`: wall time, LLM calls, tokens and tool calls of the run (latency per stage in detail).
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from agent.settings import Settings
from core.artifacts import ArtifactStore
from core.errors import GroundworkError
from evals.config import EvalConfig
from evals.judge import Judge, both_orders
from evals.store import ItemRecord
from evals.suites import Requirement, SuitePrompt

Need = Literal["judge", "clip", "minilm", "output", "image"]
Scored = tuple[str, float | None, dict[str, Any]]


class MetricUnavailable(GroundworkError):
    """A metric's model or endpoint cannot be used; the message is the reason it is skipped."""


@dataclass
class MetricContext:
    config: EvalConfig
    settings: Settings
    store: ArtifactStore
    judge: Judge | None
    notices: list[str] = field(default_factory=list)
    """Problems worth telling the user (a judge that timed out on an item...)."""


class Metric:
    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]] = frozenset()
    keys: ClassVar[dict[str, bool]] = {}
    """Output metric names -> higher is better."""
    pairwise: ClassVar[bool] = False

    def unavailable(self, ctx: MetricContext) -> str | None:
        if "judge" in self.needs and ctx.judge is None:
            return ctx.config.judge.configured() or "no VLM judge"
        return None

    async def setup(self, ctx: MetricContext) -> None:
        """Load models; raise MetricUnavailable with the reason when that fails."""
        return None

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        raise NotImplementedError


def _png(store: ArtifactStore, sha: str) -> bytes:
    return store.get_bytes(sha)


class RequirementsMetric(Metric):
    name = "requirements"
    needs = frozenset({"judge", "image"})
    keys = {"requirements": True}

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        if not prompt.requirements:
            return [(self.name, None, {"skipped": "the prompt has no requirements"})]
        if item.status == "missing":
            return [(self.name, None, {"skipped": item.error or "no image"})]
        if item.status != "done" or not item.image_sha256:
            none_met = {r.id: False for r in prompt.requirements}
            return [(self.name, 0.0, {"verdicts": none_met, "failed": item.error or "no image"})]
        assert ctx.judge is not None
        png = await asyncio.to_thread(_png, ctx.store, item.image_sha256)
        answers = await asyncio.gather(
            *(ctx.judge.yes_no(png, r.question, prompt.prompt) for r in prompt.requirements)
        )
        verdicts = {r.id: a for r, a in zip(prompt.requirements, answers, strict=True)}
        answered = [a for a in answers if a is not None]
        detail: dict[str, Any] = {"verdicts": verdicts}
        unanswered = [rid for rid, a in verdicts.items() if a is None]
        if unanswered:
            detail["unanswered"] = unanswered
        value = sum(answered) / len(answered) if answered else None
        return [(self.name, value, detail)]


class PairwiseMetric(Metric):
    """Not per item: the harness calls `compare` for each pair of arms on each prompt/seed."""

    name = "pairwise"
    needs = frozenset({"judge", "image"})
    keys = {}
    pairwise = True

    async def compare(
        self, a: ItemRecord, b: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> tuple[int | None, dict[str, Any]]:
        a_ok = a.status == "done" and a.image_sha256 is not None
        b_ok = b.status == "done" and b.image_sha256 is not None
        if not a_ok or not b_ok:
            if a.status == "missing" or b.status == "missing":
                return None, {"skipped": "an image is missing"}
            if a_ok == b_ok:
                return 0, {"note": "neither run made an image"}
            return (1 if a_ok else -1), {"note": "only one run made an image"}
        assert ctx.judge is not None and a.image_sha256 and b.image_sha256
        pa, pb = await asyncio.gather(
            asyncio.to_thread(_png, ctx.store, a.image_sha256),
            asyncio.to_thread(_png, ctx.store, b.image_sha256),
        )
        ab, ba = await asyncio.gather(
            ctx.judge.prefer(pa, pb, prompt.prompt), ctx.judge.prefer(pb, pa, prompt.prompt)
        )
        outcome = both_orders(ab, ba)
        biased = ab is not None and ab == ba and ab != "tie"
        return outcome, {"a_first": ab, "b_first": ba, "position_bias": biased}


class ClipScoreMetric(Metric):
    name = "clipscore"
    needs = frozenset({"clip", "image"})
    keys = {"clipscore": True}

    def __init__(self) -> None:
        self._embedder: Any = None
        self._lock = asyncio.Lock()

    def unavailable(self, ctx: MetricContext) -> str | None:
        m = ctx.config.metrics
        if not m.clip_model:
            return "no CLIP model configured ([metrics] clip_model and clip_pretrained)"
        if not m.clip_pretrained and not m.clip_allow_random:
            return (
                f"CLIP model {m.clip_model} has no pretrained weights set ([metrics] "
                "clip_pretrained): a random-init CLIP's scores mean nothing"
            )
        return None

    async def setup(self, ctx: MetricContext) -> None:
        from retrieval.embedders import ModelUnavailable, create_embedder

        m, r = ctx.config.metrics, ctx.settings.retrieval
        assert m.clip_model is not None
        try:
            self._embedder = await asyncio.to_thread(
                create_embedder,
                "open_clip",
                m.clip_model,
                pretrained=m.clip_pretrained,
                device=r.device,
                dtype=r.dtype,
                batch_size=8,
                allow_download=r.allow_download,
                cache_dir=r.model_cache_dir,
            )
        except (ModelUnavailable, ImportError, RuntimeError, ValueError, OSError) as exc:
            raise MetricUnavailable(f"CLIP model {m.clip_model} unavailable: {exc}") from exc

    def _cos(self, store: ArtifactStore, sha: str, text: str) -> float:
        image = store.open_image(sha)
        img = self._embedder.embed_images([image])[0]
        txt = self._embedder.embed_texts([text])[0]
        return float((img * txt).sum())

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        if item.status != "done" or not item.image_sha256:
            return [(self.name, None, {"skipped": item.error or "no image"})]
        async with self._lock:  # one forward pass at a time: the model is shared
            cos = await asyncio.to_thread(self._cos, ctx.store, item.image_sha256, prompt.prompt)
        detail = {"cosine": round(cos, 6), "model": ctx.config.metrics.clip_model}
        return [(self.name, 100.0 * max(cos, 0.0), detail)]


def normalize(text: str) -> str:
    """Casefolded, accents stripped, punctuation as spaces: 'Café' and 'cafe' match."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w+]+", " ", plain).split())


def alias_hit(text: str, aliases: list[str]) -> str | None:
    hay = f" {normalize(text)} "
    for alias in aliases:
        needle = normalize(alias)
        if needle and f" {needle} " in hay:
            return alias
    return None


def recall_targets(prompt: SuitePrompt) -> list[Requirement]:
    """The requirements a grounded prompt should name: the knowledge ones when the prompt has
    any (scene words are in the user's prompt already), else every one with a fact."""
    with_fact = [r for r in prompt.requirements if r.fact or r.aliases]
    knowledge = [r for r in with_fact if r.kind == "knowledge"]
    return knowledge or with_fact


def _chunks(text: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"[.;,:\n]+", text) if p.strip()]
    return parts or [text]


class FactRecallMetric(Metric):
    name = "fact_recall"
    needs = frozenset({"minilm", "output"})
    keys = {"fact_recall": True}

    def __init__(self) -> None:
        self._embedder: Any = None
        self._lock = asyncio.Lock()

    async def setup(self, ctx: MetricContext) -> None:
        from retrieval.embedders import ModelUnavailable, create_embedder

        r = ctx.settings.retrieval
        model = ctx.config.metrics.text_model or r.text_model
        try:
            self._embedder = await asyncio.to_thread(
                create_embedder,
                "sentence-transformers",
                model,
                device=r.device,
                dtype=r.dtype,
                batch_size=32,
                allow_download=r.allow_download,
                cache_dir=r.model_cache_dir,
            )
        except (ModelUnavailable, ImportError, RuntimeError, ValueError, OSError) as exc:
            raise MetricUnavailable(f"MiniLM ({model}) unavailable: {exc}") from exc

    def _similarities(self, facts: list[str], text: str) -> list[float]:
        chunks = _chunks(text)
        vecs = self._embedder.embed_texts(facts + chunks)
        f, c = vecs[: len(facts)], vecs[len(facts) :]
        return [float(x) for x in (f @ c.T).max(axis=1)]

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        targets = recall_targets(prompt)
        if not targets:
            return [(self.name, None, {"skipped": "no requirement names a fact"})]
        text = item.gen_prompt
        if not text:
            return [(self.name, None, {"skipped": "no prompt reached the generator"})]
        threshold = ctx.config.metrics.fact_threshold
        found: dict[str, Any] = {}
        need_sim = []
        for r in targets:
            hit = alias_hit(text, [*r.aliases, *([r.fact] if r.fact else [])])
            if hit is not None:
                found[r.id] = {"hit": True, "by": "alias", "alias": hit}
            elif r.fact:
                need_sim.append(r)
            else:
                found[r.id] = {"hit": False, "by": "alias"}
        if need_sim:
            async with self._lock:
                sims = await asyncio.to_thread(self._similarities, [r.fact for r in need_sim], text)
            for r, sim in zip(need_sim, sims, strict=True):
                found[r.id] = {"hit": sim >= threshold, "by": "minilm", "similarity": round(sim, 4)}
        hits = sum(1 for v in found.values() if v["hit"])
        return [(self.name, hits / len(targets), {"facts": found})]


class CostMetric(Metric):
    name = "cost"
    needs = frozenset({"output"})
    keys = {"latency_s": False, "llm_calls": False, "tokens": False, "tool_calls": False}

    async def score(
        self, item: ItemRecord, prompt: SuitePrompt, ctx: MetricContext
    ) -> list[Scored]:
        if item.status == "missing":
            return [(k, None, {"skipped": "no run"}) for k in self.keys]
        out = item.output or {}
        stages: dict[str, float] = {}
        for event in out.get("stages") or []:
            if isinstance(event, dict) and event.get("stage"):
                name = str(event["stage"])
                stages[name] = stages.get(name, 0.0) + float(event.get("elapsed_s") or 0.0)
        usage = out.get("usage") or {}
        has_usage = bool(usage) or bool(out.get("stages"))

        def use(key: str) -> float | None:
            return float(usage.get(key, 0)) if has_usage else None

        tokens = (
            float(usage.get("prompt_tokens", 0)) + float(usage.get("completion_tokens", 0))
            if has_usage
            else None
        )
        return [
            ("latency_s", item.wall_s, {"stages": {k: round(v, 4) for k, v in stages.items()}}),
            ("llm_calls", use("llm_calls"), {}),
            ("tokens", tokens, {}),
            ("tool_calls", use("tool_calls"), {}),
        ]


METRICS: dict[str, type[Metric]] = {
    m.name: m
    for m in (RequirementsMetric, PairwiseMetric, ClipScoreMetric, FactRecallMetric, CostMetric)
}


def higher_is_better(metric: str) -> bool:
    for cls in METRICS.values():
        if metric in cls.keys:
            return cls.keys[metric]
    return True
