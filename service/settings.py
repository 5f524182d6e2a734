"""The `service` section: who may call the HTTP API, how much, and where its records live.

It is its own `BaseSettings` (env `GROUNDWORK_SERVICE__...`, same prefix and `__` convention as
`agent.settings.Settings`) so the server's knobs stay out of the agent's settings object: the
CLI, the eval harness and langgraph.json never see tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_TOKEN_CHARS = 8


def token_name(token: str) -> str:
    """A stable, non-secret name for an unnamed token (logs and ownership use names only)."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:10]


class ServiceSettings(BaseSettings):
    """Everything `groundwork serve` reads; defaults are safe for one host on loopback."""

    model_config = SettingsConfigDict(
        env_prefix="GROUNDWORK_SERVICE__",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")
    tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description='API bearer tokens. JSON {"name": "token"} (the name shows in logs and owns '
        'runs), a JSON list ["token", ...], or comma-separated "name=token" / "token" entries.',
    )
    db: Path = Field(
        default=Path(".groundwork/service.sqlite"),
        description="SQLite file of accepted runs and their event logs (SSE replay, restarts).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for per-token rate and concurrency limits; None = the queue's Redis "
        "(GROUNDWORK_QUEUE__REDIS_URL).",
    )
    limits_backend: Literal["redis", "memory"] = Field(
        default="redis",
        description="redis: limits shared by every server process; memory: this process only "
        "(a laptop without Redis).",
    )
    key_prefix: str = Field(default="groundwork:service", description="Prefix of Redis keys.")
    redis_max_connections: int = Field(
        default=32, ge=2, description="Redis connections for limits; a burst waits for one."
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Authenticated requests per token per minute."
    )
    auth_failures_per_minute: int = Field(
        default=60,
        ge=1,
        description="Requests with a missing or invalid token per client address per minute; "
        "past it, that address gets 429 before its token is even checked.",
    )
    max_concurrent_runs: int = Field(
        default=4, ge=1, description="Unfinished runs per token (queued or running)."
    )
    max_running: int = Field(
        default=4, ge=1, le=1024, description="Runs this process executes at once; more wait."
    )
    max_queued: int = Field(
        default=512, ge=1, description="Unfinished runs this process holds before it answers 503."
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_images: int = Field(default=4, ge=1, le=10, description="Largest `n` of an images call.")
    run_timeout_s: float = Field(
        default=1800.0, gt=0, description="A run still going after this long is failed."
    )
    url_ttl_s: int = Field(
        default=3600, ge=60, description="Lifetime of signed artifact URLs (OpenAI's: 1 hour)."
    )
    url_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs artifact URLs; None = derived from the tokens (rotating a "
        "token then invalidates the URLs it was given).",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach this server at (behind a proxy); None = the URL of "
        "each request.",
    )
    sse_keepalive_s: float = Field(
        default=15.0, gt=0, description="Seconds between SSE comments on a quiet stream."
    )
    lease_ttl_s: float = Field(
        default=15.0,
        gt=0,
        description="With PostgreSQL (several replicas): a replica renews the lease of each run "
        "it drives every third of this; a run whose lease lapsed (its replica died) is taken "
        "over by another replica.",
    )
    sse_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="With PostgreSQL: how often an SSE stream checks for events written by "
        "another replica (local events wake it at once).",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On shutdown, how long running runs may finish before they are stopped "
        "(they stay checkpointed and resume at the next start).",
    )
    probe_timeout_s: float = Field(default=2.0, gt=0, description="Per-check /readyz timeout.")
    readyz_cache_s: float = Field(
        default=30.0,
        ge=0,
        description="How long /readyz reuses its last probe of the LLM endpoints (the only "
        "outbound requests it makes).",
    )
    max_upload_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest body of POST /v1/images/edits (an image upload; 413 above).",
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("{", "[")):
                value = json.loads(text)
            else:
                value = {}
                for entry in (p.strip() for p in text.split(",")):
                    if entry:
                        name, sep, token = entry.partition("=")
                        value[name if sep else token_name(entry)] = token if sep else entry
        if isinstance(value, list | tuple):
            value = {token_name(str(t)): t for t in value}
        if isinstance(value, dict):
            for name, token in value.items():
                secret = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
                if len(secret) < MIN_TOKEN_CHARS:
                    raise ValueError(
                        f"service token {name!r} is shorter than {MIN_TOKEN_CHARS} characters"
                    )
        return value

    def token_values(self) -> dict[str, str]:
        return {name: s.get_secret_value() for name, s in self.tokens.items()}
