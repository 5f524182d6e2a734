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

import ast
import asyncio
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agent.settings import Settings
from core.artifacts import ArtifactStore
from core.errors import GroundworkError, InputError
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
    sources: dict[str, str] = field(default_factory=dict)
    """metric -> where its judge instruction came from (the benchmark's checkout or ours)."""


@dataclass
class Output:
    """One arm output of a known-answer case: the prompt the generator got and/or the image."""

    gen_prompt: str | None = None
    image: bytes | None = None


@dataclass
class KnownAnswer:
    """A good and a bad output for the same prompt: a metric that cannot score the good one
    above the bad one cannot tell what it claims to measure (issue 18's metric validity)."""

    name: str
    prompt: SuitePrompt
    good: Output
    bad: Output
    key: str | None = None
    """Which of the metric's keys is compared (default: the first)."""
    reference: bytes | None = None
    """A ground-truth image the judge sees beside the output (KnowGen)."""


class Metric:
    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]] = frozenset()
    keys: ClassVar[dict[str, bool]] = {}
    """Output metric names -> higher is better."""
    pairwise: ClassVar[bool] = False
    quality: ClassVar[bool] = False
    """A quality score (shown in the score plots and the grid), not a cost."""
    label: ClassVar[str] = ""
    """How the report names it, when not by `name` (e.g. "GenEval-VLM")."""

    def known_answers(self) -> list[KnownAnswer]:
        """Cases with a known better output; empty for metrics that judge nothing (cost)."""
        return []

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
    quality = True

    def known_answers(self) -> list[KnownAnswer]:
        return [count_case()]

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

    def known_answers(self) -> list[KnownAnswer]:
        return [count_case()]

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
    quality = True

    def known_answers(self) -> list[KnownAnswer]:
        return [colour_case()]

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
    quality = True

    def known_answers(self) -> list[KnownAnswer]:
        prompt = SuitePrompt(
            id="known-mooncake",
            prompt="The round pastry a family shares at the Mid-Autumn Festival, on a plate",
            requirements=[
                Requirement(
                    id="answer",
                    question="Does the image show mooncakes?",
                    fact="mooncakes",
                    aliases=["mooncake", "mooncakes"],
                    kind="knowledge",
                )
            ],
        )
        return [
            KnownAnswer(
                "names the answer vs restates the riddle",
                prompt,
                Output(gen_prompt="mooncakes on a plate"),
                Output(gen_prompt="a plate of croissants at a family gathering in mainland China"),
            )
        ]

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


METRICS: dict[str, type[Metric]] = {}
"""Every metric by name: the built-ins below and each module of `evals/plugins/` (adding a
metric is one file there with `@register_metric` on its class)."""


def register_metric(cls: type[Metric]) -> type[Metric]:
    if cls.name in METRICS and METRICS[cls.name] is not cls:
        raise ValueError(f"two metrics are named {cls.name!r}")
    METRICS[cls.name] = cls
    return cls


for _m in (RequirementsMetric, PairwiseMetric, ClipScoreMetric, FactRecallMetric, CostMetric):
    register_metric(_m)


def _load_plugins() -> None:
    import importlib
    import pkgutil

    import evals.plugins as plugins

    for info in sorted(pkgutil.iter_modules(plugins.__path__), key=lambda i: i.name):
        importlib.import_module(f"evals.plugins.{info.name}")


def enabled_metrics(config: EvalConfig, suites: list[Any]) -> list[str]:
    """The configured metrics (each must be registered); when the config names none, the
    defaults plus each suite's protocol metric (wise for WISE, knowgen for KnowGen,
    geneval_vlm for GenEval)."""
    names = list(config.metrics.enabled)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InputError(
            f"[metrics] enabled: unknown metric(s) {', '.join(unknown)} (registered: "
            f"{', '.join(METRICS)}); a new metric is a module in evals/plugins/"
        )
    if "enabled" not in config.metrics.model_fields_set:
        for suite in suites:
            metric = suite.protocol.metric if suite.protocol else None
            if metric and metric in METRICS and metric not in names:
                names.append(metric)
    return names


async def start_metrics(
    config: EvalConfig, suites: list[Any], ctx: MetricContext
) -> tuple[list[Metric], dict[str, str | None]]:
    """Every enabled metric that can run with this context, set up; and for each enabled name
    the reason it cannot (None when it runs). The harness and `check-metrics` share it."""
    active: list[Metric] = []
    reasons: dict[str, str | None] = {}
    for name in enabled_metrics(config, suites):
        metric = METRICS[name]()
        reason = metric.unavailable(ctx)
        if reason is None:
            try:
                await metric.setup(ctx)
            except MetricUnavailable as exc:
                reason = str(exc)
        reasons[name] = reason
        if reason is None:
            active.append(metric)
    return active, reasons


def metric_class(key: str) -> type[Metric] | None:
    """The metric that writes the score `key` (a metric name or one of its keys)."""
    if key in METRICS:
        return METRICS[key]
    return next((cls for cls in METRICS.values() if key in cls.keys), None)


def higher_is_better(metric: str) -> bool:
    for cls in METRICS.values():
        if metric in cls.keys:
            return cls.keys[metric]
    return True


def quality_metrics() -> list[str]:
    """Score keys shown as quality (plots, the grid), in registration order."""
    return [k for cls in METRICS.values() if cls.quality for k in cls.keys if cls.keys[k]]


def metric_label(key: str) -> str:
    cls = metric_class(key)
    return cls.label if cls is not None and cls.label and key == cls.name else key


# -- a benchmark's own judge instruction, read from its checkout -----------------------------
_MAX_SOURCE_BYTES = 2_000_000


def checkout_instruction(
    checkout: str | Path | None, must_contain: tuple[str, ...], *, name: str | None = None
) -> tuple[str, str] | None:
    """(instruction, "file:CONSTANT") from the longest module-level string constant of the
    checkout's Python files that mentions every word of `must_contain` (or is named `name`).
    Parsed with `ast`, never imported or run; None when the checkout has none."""
    if checkout is None:
        return None
    root = Path(checkout).expanduser()
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))[:500] if root.is_dir() else []
    best: tuple[str, str] | None = None
    for file in files:
        try:
            if file.stat().st_size > _MAX_SOURCE_BYTES:
                continue
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target = node.targets[0]
            if not isinstance(target, ast.Name):
                continue
            value = node.value
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                continue
            text = value.value
            lowered = text.lower()
            named = name is not None and target.id == name
            matches = named or all(w.lower() in lowered for w in must_contain)
            if matches and (best is None or len(text) > len(best[0])):
                best = (text, f"{file}:{target.id}")
    return best


# -- known-answer cases ----------------------------------------------------------------------


class InstructedMetric(Metric):
    """A judge metric that asks with the benchmark's own instruction, read (parsed, never run)
    from the user's checkout when `[metrics] <checkout_setting>` names one, else ours; the
    report says which (`ctx.sources`)."""

    own_instruction: ClassVar[str]
    checkout_setting: ClassVar[str]
    """The `[metrics]` field that names the checkout."""
    instruction_words: ClassVar[tuple[str, ...]]
    """Words the benchmark's instruction string must mention (see `checkout_instruction`)."""
    checkout_label: ClassVar[str]
    missing: ClassVar[str]
    """What is said, before the checkout's path, when it holds no such instruction."""

    def __init__(self) -> None:
        self.instruction = self.own_instruction

    def unavailable(self, ctx: MetricContext) -> str | None:
        reason = super().unavailable(ctx)
        if reason is None and not hasattr(ctx.judge, "ask"):
            return "the judge cannot take a benchmark's own instruction (no `ask`)"
        return reason

    async def setup(self, ctx: MetricContext) -> None:
        checkout = getattr(ctx.config.metrics, self.checkout_setting)
        found = await asyncio.to_thread(checkout_instruction, checkout, self.instruction_words)
        if found is not None:
            self.instruction, where = found
            ctx.sources[self.name] = f"judge instruction from {self.checkout_label} ({where})"
        elif checkout:
            raise MetricUnavailable(
                f"{self.missing} {checkout}; unset [metrics] {self.checkout_setting} to use "
                "Groundwork's own"
            )
        else:
            ctx.sources[self.name] = (
                f"judge instruction: Groundwork's own (no {self.checkout_setting})"
            )


def drawn(shapes: int, colour: str, *, square: bool = False, label: str = "") -> bytes:
    """A small PNG with `shapes` filled circles (or squares) of one colour on white, spread out
    so a VLM can count them, and an optional text label."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(image)
    for i in range(shapes):
        x, y = 20 + (i % 3) * 80, 20 + (i // 3) * 80
        box = (x, y, x + 56, y + 56)
        (draw.rectangle if square else draw.ellipse)(box, fill=colour)
    if label:
        draw.text((10, 236), label, fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def count_case() -> KnownAnswer:
    prompt = SuitePrompt(
        id="known-count",
        prompt="three red circles on a white background",
        category="counting",
        requirements=[
            Requirement(
                id="count",
                question="Does the image show exactly three red circles?",
                fact="three red circles",
                kind="count",
            )
        ],
    )
    return KnownAnswer(
        "the right count vs a wrong one",
        prompt,
        Output(gen_prompt=prompt.prompt, image=drawn(3, "red")),
        Output(gen_prompt=prompt.prompt, image=drawn(5, "red")),
    )


def colour_case() -> KnownAnswer:
    prompt = SuitePrompt(id="known-colour", prompt="a red circle on a white background")
    return KnownAnswer(
        "the right colour and shape vs wrong ones",
        prompt,
        Output(gen_prompt=prompt.prompt, image=drawn(1, "red")),
        Output(gen_prompt=prompt.prompt, image=drawn(1, "blue", square=True)),
    )


_load_plugins()
