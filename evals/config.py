"""The eval config: a TOML file, validated by pydantic before anything starts.

    name = "plain-vs-agent"
    out_dir = "eval-out/plain-vs-agent"
    suites = ["knowledge-v1", {path = "geneval/evaluation_metadata.jsonl", format = "geneval"}]
    seeds = [0, 1]                 # or images_per_prompt = 2 (seeds 0..n-1)
    baseline = "plain"
    concurrency = 4

    [settings]                      # shared by every arm: generator, tools, artifacts...
    generator = {model = "stabilityai/sd-turbo", steps = 2}

    [[arms]]
    name = "plain"
    kind = "plain"

    [[arms]]
    name = "agent"
    kind = "agent"
    policy = "planned"
    settings = {llm = {base_url = "http://localhost:8001/v1", model = "qwen2.5-7b"}}

    [judge]
    base_url = "http://localhost:8002/v1"
    model = "Qwen2.5-VL-7B-Instruct"

Fairness is by construction: the generator, the research tools (and their cache or snapshot),
the prompts and the seeds belong to the eval, not to an arm, so an arm's `settings` may not
override the `generator`, `queue`, `tools`, `artifacts` or `retrieval` sections.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.settings import Policy, Settings
from core.errors import InputError
from evals.suites import SuiteFormat

SHARED_SECTIONS = ("generator", "queue", "tools", "artifacts", "retrieval")
DEFAULT_METRICS: tuple[str, ...] = (
    "requirements",
    "pairwise",
    "clipscore",
    "fact_recall",
    "cost",
)
"""Enabled when the config names none; a suite's protocol metric (wise, knowgen, geneval_vlm)
is added for a suite that defines one. Any registered metric (evals.metrics.METRICS) is valid."""
ALL_METRICS = DEFAULT_METRICS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteRef(_Strict):
    path: str = Field(description="A built-in suite name or a file/folder.")
    format: SuiteFormat = "auto"
    name: str | None = Field(default=None, description="Prefix of prompt ids; default: file stem.")
    limit: int = Field(default=0, ge=0, description="First N prompts only (0 = all).")
    split: str | None = Field(
        default=None, description="T2I-CompBench folder: train, val (default) or all."
    )


class _ArmBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides merged into the eval's Settings for this arm only (llm, agent).",
    )
    generator_lora: str | None = Field(
        default=None,
        description="A tuned generator folder (`groundwork tune feedback|curate`) whose base is "
        "the eval's generator.model: this arm's images come from base + LoRA "
        "(evals/arms_tuned_generator.py). Combines with any kind.",
    )

    @field_validator("settings")
    @classmethod
    def _no_shared_sections(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        shared = sorted(set(overrides) & set(SHARED_SECTIONS))
        if shared:
            raise ValueError(
                f"an arm may not override {', '.join(shared)}: those are shared by every arm so "
                "the comparison stays fair; set them in the top-level [settings] table"
            )
        return overrides


class PlainArm(_ArmBase):
    """The user's prompt straight to the generator."""

    kind: Literal["plain"] = "plain"


class RewriteArm(_ArmBase):
    """One LLM rewrite of the prompt (no tools), then the generator."""

    kind: Literal["rewrite"] = "rewrite"


class AgentArm(_ArmBase):
    """A whole Groundwork run (research, synthesis, critique) with any LLM."""

    kind: Literal["agent"] = "agent"
    policy: Policy = "planned"


class TrainedArm(_ArmBase):
    """A trained search policy (e.g. Gen-Searcher-8B served by vLLM) driving the react policy
    with our tools, in its own protocol (`agent.react_profile = "gen-searcher"`)."""

    kind: Literal["trained"] = "trained"
    base_url: str = Field(description="Its OpenAI-compatible endpoint, e.g. http://host:8000/v1.")
    model: str = Field(description="The served model name, e.g. Gen-Searcher-8B.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the endpoint's API key."
    )
    react_profile: str = Field(default="gen-searcher")
    upstream_checkout: str | None = Field(
        default=None,
        description="A checkout of tulerfeng/Gen-Searcher: the gen-searcher profile reads its "
        "system prompt, tool descriptions and final message from it (parsed, never run); "
        "without it, Groundwork's own wording (with a warning).",
    )
    vision: bool = Field(
        default=True,
        description="The policy sees image results as images (Gen-Searcher is a VLM trained so).",
    )


class ImportedArm(_ArmBase):
    """Images (and grounded prompts) produced elsewhere, listed in a JSONL manifest:
    `{"prompt_id": "knowledge-v1/k001-phryges", "seed": 0, "image": "imgs/k001.png",
    "gen_prompt": "...", "stages": [...], "usage": {...}}` (image paths relative to it)."""

    kind: Literal["imported"] = "imported"
    manifest: str


class TunedPolicyArm(_ArmBase):
    """A policy fine-tuned by `groundwork tune policy` (its output folder), served by a
    maintained server the arm starts and stops (evals/arms_tuned_policy.py), driving the react
    policy with the eval's tools and generator in the protocol it was trained on."""

    kind: Literal["tuned-policy"] = "tuned-policy"
    path: str = Field(description="The tune output folder (vNNN, or its parent: the latest).")
    server: Literal["transformers", "vllm", "external"] = Field(
        default="transformers",
        description="transformers serve (merged weights, CPU or GPU), vllm serve --enable-lora "
        "(GPU), or external: already served at base_url as model.",
    )
    base_url: str | None = Field(default=None, description="external: its endpoint.")
    model: str | None = Field(default=None, description="external: the served model name.")
    react_profile: str | None = Field(
        default=None, description="Default: the profile it was trained with (tune.json)."
    )
    startup_timeout_s: float = Field(default=600.0, gt=0)


class TunedGeneratorArm(_ArmBase):
    """The eval's base generator + a LoRA from `groundwork tune feedback|curate`, behind a
    policy (plain prompt by default): the generator side of "agent vs tuned generator vs both"."""

    kind: Literal["tuned-generator"] = "tuned-generator"
    lora: str = Field(description="The tuned folder (it holds groundwork_lora.json).")
    policy: Literal["plain", "rewrite", "planned", "react"] = Field(
        default="plain", description="What makes the prompt: as written, one rewrite, the agent."
    )


ArmConfig = Annotated[
    PlainArm
    | RewriteArm
    | AgentArm
    | TrainedArm
    | ImportedArm
    | TunedPolicyArm
    | TunedGeneratorArm,
    Field(discriminator="kind"),
]


class JudgeConfig(_Strict):
    """The VLM judge, an OpenAI-compatible endpoint with vision."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = Field(default=None, description="Env var holding its API key.")
    method: Literal["json_schema", "text"] = Field(
        default="json_schema",
        description="json_schema: a {'answer': 'yes'|'no'} object; text: the reply must start "
        "with yes or no. Either way an answer that does not parse is asked again, never read "
        "as a pass.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=6, description="Asks per question until an answer parses."
    )
    transport_retries: int = Field(default=2, ge=0, le=6, description="HTTP-level retries.")
    timeout_s: float = Field(default=120.0, gt=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=64, ge=8)

    def configured(self) -> str | None:
        if not self.base_url or not self.model:
            return "no VLM judge configured ([judge] base_url and model)"
        return None

    def api_key(self) -> str:
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "") or "not-needed"
        return "not-needed"


class MetricsConfig(_Strict):
    enabled: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Registered metric names (evals.metrics.METRICS; checked before any item).",
    )

    pairwise: Literal["baseline", "all"] = Field(
        default="baseline", description="Judge each arm against the baseline, or every pair."
    )
    clip_model: str | None = Field(default=None, description="open_clip model, e.g. ViT-B-32.")
    clip_pretrained: str | None = Field(
        default=None, description="Its pretrained tag or weights file."
    )
    clip_allow_random: bool = Field(
        default=False,
        description="Allow a random-init CLIP (tests only: its scores mean nothing).",
    )
    fact_threshold: float = Field(
        default=0.6, ge=0.0, le=1.0, description="MiniLM cosine that counts as naming a fact."
    )
    text_model: str | None = Field(
        default=None, description="sentence-transformers model; None = settings' text_model."
    )
    wise_checkout: str | None = Field(
        default=None,
        description="A checkout of PKU-YuanGroup/WISE: the wise metric's judge instruction is "
        "read from its evaluation script (else Groundwork's own; the report says which).",
    )
    knowgen_checkout: str | None = Field(
        default=None,
        description="A checkout of tulerfeng/Gen-Searcher (KnowGen_Eval): the knowgen judge "
        "instruction is read from its scorer (else Groundwork's own).",
    )
    check: bool = Field(
        default=True,
        description="Before the first item, run each metric's known-answer cases against the "
        "configured judges and refuse to start when a metric cannot tell good from bad.",
    )


class ReportConfig(_Strict):
    thumb_px: int = Field(default=256, ge=32, le=1024)
    max_prompts: int = Field(default=0, ge=0, description="Grid rows shown (0 = all).")
    bootstrap: int = Field(default=2000, ge=100, le=100_000)
    seed: int = Field(default=0, description="Seed of the bootstrap resampling.")


class EvalConfig(_Strict):
    name: str = "eval"
    out_dir: Path = Path("eval-out")
    suites: list[str | SuiteRef] = Field(min_length=1)
    arms: list[ArmConfig] = Field(min_length=1)
    baseline: str | None = Field(default=None, description="Arm the others are compared to.")
    seeds: list[int] | None = None
    images_per_prompt: int = Field(default=1, ge=1, le=64)
    seed: int = Field(default=0, description="First seed when `seeds` is not given.")
    concurrency: int = Field(default=2, ge=1, le=256)
    max_attempts: int = Field(
        default=2, ge=1, le=10, description="Runs of a failed item across reruns of the eval."
    )
    limit: int = Field(default=0, ge=0, description="First N prompts of each suite (smoke run).")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of Settings() shared by every arm."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    record: Path | None = Field(default=None, description="Record every tool result here.")
    replay: Path | None = Field(default=None, description="Replay tool results from here.")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names repeat: {', '.join(dup)}")
        if self.baseline is None:
            self.baseline = names[0]
        elif self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not an arm ({', '.join(names)})")
        if self.record and self.replay:
            raise ValueError("record and replay are exclusive: record once, then replay")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds repeat")
        return self

    def seed_list(self) -> list[int]:
        if self.seeds:
            return list(self.seeds)
        return [self.seed + i for i in range(self.images_per_prompt)]

    def suite_refs(self) -> list[SuiteRef]:
        refs = [SuiteRef(path=s) if isinstance(s, str) else s for s in self.suites]
        if self.limit:
            refs = [
                r.model_copy(update={"limit": min(r.limit or self.limit, self.limit)}) for r in refs
            ]
        return refs

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


def load_config(path: Path | str, **overrides: Any) -> EvalConfig:
    """Read and validate a TOML config; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"eval config {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"eval config {path} is not valid TOML: {exc}") from exc
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = parse_config(data, where=str(path))
    base = path.parent
    config.out_dir = _rel(base, config.out_dir)
    for key in ("record", "replay"):
        value = getattr(config, key)
        if value is not None:
            setattr(config, key, _rel(base, value))
    config.settings = _settings_paths(base, config.settings)
    refs = config.suite_refs()
    for ref in refs:
        candidate = base / ref.path
        if not Path(ref.path).is_absolute() and candidate.exists():
            ref.path = str(candidate)
    config.suites = list(refs)
    for arm in config.arms:
        if isinstance(arm, ImportedArm):
            arm.manifest = str(_rel(base, Path(arm.manifest)))
        if isinstance(arm, TunedPolicyArm):
            arm.path = str(_rel(base, Path(arm.path)))
        if isinstance(arm, TunedGeneratorArm):
            arm.lora = str(_rel(base, Path(arm.lora)))
        if arm.generator_lora:
            arm.generator_lora = str(_rel(base, Path(arm.generator_lora)))
    return config


def parse_config(data: dict[str, Any], where: str = "config") -> EvalConfig:
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(f"invalid eval config {where}: {loc}: {first['msg']}") from exc


def _settings_paths(base: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Relative paths in [settings] (artifacts.root, runs_dir, generator.model as a folder...)
    are relative to the config file, like every other path in it."""

    def is_path(annotation: Any) -> bool:
        return annotation is Path or Path in getattr(annotation, "__args__", ())

    out: dict[str, Any] = {}
    for section, values in overrides.items():
        field = Settings.model_fields.get(section)
        if field is None:
            out[section] = values
        elif isinstance(values, dict) and isinstance(field.annotation, type):
            fields = getattr(field.annotation, "model_fields", {})
            out[section] = {
                k: str(_rel(base, Path(v)))
                if isinstance(v, str) and k in fields and is_path(fields[k].annotation)
                else v
                for k, v in values.items()
            }
        elif isinstance(values, str) and is_path(field.annotation):
            out[section] = str(_rel(base, Path(values)))
        else:
            out[section] = values
    return out


def _rel(base: Path, p: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else base / p


def check_overrides(overrides: dict[str, Any], *, where: str) -> None:
    for section, values in overrides.items():
        field_info = Settings.model_fields.get(section)
        if field_info is None:
            raise InputError(
                f"{where}: unknown settings section {section!r} "
                f"(known: {', '.join(Settings.model_fields)})"
            )
        model = field_info.annotation
        if isinstance(values, dict) and isinstance(model, type) and issubclass(model, BaseModel):
            unknown = sorted(set(values) - set(model.model_fields))
            if unknown:
                raise InputError(
                    f"{where}: unknown {section} setting(s) {', '.join(unknown)} "
                    f"(known: {', '.join(model.model_fields)})"
                )


def eval_settings(config: EvalConfig) -> Settings:
    """Settings() (environment, .env) with the eval's shared overrides; the run folders,
    traces and checkpoints live in the eval's folder unless the config says otherwise."""
    overrides: dict[str, Any] = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in config.settings.items()
    }
    check_overrides(overrides, where="[settings]")
    out = config.out_dir
    overrides.setdefault("runs_dir", str(out / "runs"))
    overrides.setdefault("traces_dir", str(out / "traces"))
    overrides.setdefault("checkpoint_db", str(out / "checkpoints.sqlite"))
    try:
        return Settings().merged(overrides)
    except ValueError as exc:
        raise InputError(f"invalid [settings] in the eval config: {exc}") from exc
