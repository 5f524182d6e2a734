"""Small pieces of the service without a server: settings from the environment, tokens,
signed URLs, the in-memory limiter, and what the CLI says when it cannot start."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.auth import Auth
from service.limits import LimitExceeded, MemoryLimiter, redact
from service.settings import ServiceSettings, token_name

TOKEN = "a-long-enough-token-1"


def test_tokens_come_from_the_environment_in_three_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_SERVICE__TOKENS", json.dumps({"alice": TOKEN}))
    monkeypatch.setenv("GROUNDWORK_SERVICE__MAX_RUNNING", "7")
    cfg = ServiceSettings()
    assert cfg.token_values() == {"alice": TOKEN} and cfg.max_running == 7
    assert TOKEN not in repr(cfg)  # SecretStr: never printed
    monkeypatch.setenv("GROUNDWORK_SERVICE__TOKENS", f'["{TOKEN}"]')
    assert ServiceSettings().token_values() == {token_name(TOKEN): TOKEN}
    monkeypatch.setenv("GROUNDWORK_SERVICE__TOKENS", f"alice={TOKEN}, {TOKEN}x")
    assert ServiceSettings().token_values() == {
        "alice": TOKEN,
        token_name(TOKEN + "x"): TOKEN + "x",
    }


def test_short_tokens_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_SERVICE__TOKENS", "alice=short")
    with pytest.raises(ValidationError, match="shorter than 8"):
        ServiceSettings()


def test_auth_names_the_caller_and_rejects_everything_else() -> None:
    auth = Auth(ServiceSettings.model_validate({"tokens": {"alice": TOKEN, "bob": TOKEN + "b"}}))
    assert auth.authenticate(f"Bearer {TOKEN}") == "alice"
    assert auth.authenticate(f"bearer {TOKEN}b") == "bob"
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"{TOKEN}"):
        assert auth.authenticate(header) is None, header


def test_signed_urls_expire_and_cannot_be_moved_to_another_artifact() -> None:
    auth = Auth(ServiceSettings.model_validate({"tokens": {"alice": TOKEN}, "url_ttl_s": 60}))
    sha, other = "a" * 64, "b" * 64
    query = dict(p.split("=") for p in auth.sign(sha).split("&"))
    assert auth.verify(sha, int(query["exp"]), query["sig"])
    assert not auth.verify(other, int(query["exp"]), query["sig"])
    assert not auth.verify(sha, int(query["exp"]) + 1, query["sig"])
    old = dict(p.split("=") for p in auth.sign(sha, now=time.time() - 120).split("&"))
    assert not auth.verify(sha, int(old["exp"]), old["sig"])
    rotated = Auth(ServiceSettings.model_validate({"tokens": {"alice": TOKEN + "new"}}))
    assert not rotated.verify(sha, int(query["exp"]), query["sig"])


async def test_memory_limiter_counts_requests_and_unfinished_runs() -> None:
    limiter = MemoryLimiter(per_minute=2, max_runs=1, run_ttl_s=60)
    await limiter.hit("a")
    await limiter.hit("a")
    with pytest.raises(LimitExceeded) as caught:
        await limiter.hit("a")
    assert 1 <= caught.value.retry_after <= 60
    await limiter.hit("b")
    await limiter.acquire("a", "r1")
    await limiter.acquire("a", "r1")  # the same run again is not a second slot
    with pytest.raises(LimitExceeded):
        await limiter.acquire("a", "r2")
    await limiter.release("a", "r1")
    await limiter.acquire("a", "r2")


def test_redact_hides_passwords() -> None:
    assert redact("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_serve_without_tokens_says_how_to_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from cli.serve import serve

    monkeypatch.delenv("GROUNDWORK_SERVICE__TOKENS", raising=False)
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--port", "1"])
    assert result.exit_code == 2
    assert "GROUNDWORK_SERVICE__TOKENS" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_request_limit_is_a_moving_window_with_no_burst_at_the_boundary(
    backend: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A fixed one-minute window let a client spend its budget at 0:59.9 and again at 1:00.1
    (2x in 0.2 s); the moving window counts the last 60 s wherever the minute boundary is."""
    import uuid

    from service.limits import Limiter, RedisLimiter

    clock = {"now": (time.time() // 60 + 1) * 60 - 0.1}  # 0.1 s before a minute boundary
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    limiter: Limiter
    if backend == "memory":
        limiter = MemoryLimiter(per_minute=5, max_runs=1, run_ttl_s=60)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"gw-unit-{uuid.uuid4().hex[:8]}"
        limiter = RedisLimiter(url, prefix=prefix, per_minute=5, max_runs=1, run_ttl_s=60)
    try:
        for _ in range(5):
            await limiter.hit("alice")
        clock["now"] += 0.2  # across the boundary: a fixed window would start afresh here
        with pytest.raises(LimitExceeded) as caught:
            await limiter.hit("alice")
        assert 59 <= caught.value.retry_after <= 60  # the oldest hit leaves the window then
        await limiter.hit("bob")  # per token
        clock["now"] += 60.0  # a full minute later the window has moved past all five
        await limiter.hit("alice")
    finally:
        await limiter.aclose()
