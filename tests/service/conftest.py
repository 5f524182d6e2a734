"""Fixtures of the service tests: settings rooted in tmp_path, a live server factory, SSE."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.settings import Settings
from service import ServiceSettings, create_app
from service.runs import RunnerFactory
from tests.service.fakes import FakeFactory, LiveServer

ALICE = "alice-secret-token-0123456789"
BOB = "bob-secret-token-9876543210"
TOKENS = {"alice": ALICE, "bob": BOB}


def auth(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def gw_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "generator": {"width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "runs_dir": str(tmp_path / "runs"),
            "checkpoint_db": str(tmp_path / "checkpoints.sqlite"),
            "traces_dir": str(tmp_path / "traces"),
            "tools": {"text_provider": "none", "image_provider": "none", "cache_enabled": False},
            "retrieval": {"kb_dir": str(tmp_path / "kb")},
        }
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this session (skips when no server answers)."""
    from tests.support import postgres

    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with postgres.throwaway_database() as url:
        yield url


@pytest.fixture
def service_cfg(tmp_path: Path, redis_url: str) -> Callable[..., ServiceSettings]:
    prefix = f"gw-test-{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "tokens": TOKENS,
            "db": str(tmp_path / "service.sqlite"),
            "redis_url": redis_url,
            "key_prefix": prefix,
            "shutdown_grace_s": 0,
            "sse_keepalive_s": 1,
            **overrides,
        }
        return ServiceSettings.model_validate(values)

    return make


@pytest.fixture
def start_server(
    gw_settings: Settings, service_cfg: Callable[..., ServiceSettings]
) -> Iterator[Callable[..., LiveServer]]:
    """start_server(factory, settings, real=False, **service_overrides) -> a started server;
    the fake runner unless `real` (graphs.runner.Runner) or another factory is given."""
    servers: list[LiveServer] = []

    def start(
        factory: RunnerFactory | None = None,
        settings: Settings | None = None,
        *,
        real: bool = False,
        **overrides: Any,
    ) -> LiveServer:
        app = create_app(
            settings or gw_settings,
            service_cfg(**overrides),
            runner_factory=None if real else (factory or FakeFactory()),
        )
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def read_sse(response: httpx.Response, stop: int | None = None) -> list[dict[str, Any]]:
    """Events of an SSE response as {"id", "event", "data"}; `stop` = leave after that many."""
    events: list[dict[str, Any]] = []
    block: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in block:
                block["data"] = json.loads(block["data"])
                events.append(block)
                if stop is not None and len(events) >= stop:
                    return events
            block = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            block["id"] = int(value)
        elif name in ("event", "data"):
            block[name] = value
    return events


def wait_status(
    client: httpx.Client, run_id: str, statuses: tuple[str, ...], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/runs/{run_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {body['status']} after {timeout} s")
        time.sleep(0.05)
