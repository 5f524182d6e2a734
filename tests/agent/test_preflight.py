"""Preflight checks every distinct endpoint the run's LLM roles use, each once, before any work."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import agent.preflight as preflight_module
from agent.preflight import preflight, roles_in_use
from agent.settings import Settings
from core.errors import InputError
from tests.support.scripted_llm import ScriptedLLM


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every /models URL preflight asks, in order."""
    seen: list[str] = []
    real = preflight_module.httpx.get

    def get(url: str, **kwargs: Any) -> Any:
        seen.append(url)
        return real(url, **kwargs)

    monkeypatch.setattr(preflight_module.httpx, "get", get)
    yield seen


def _settings(llm: dict[str, Any], **agent: Any) -> Settings:
    return Settings.model_validate({"llm": llm, "agent": agent})


def test_dead_policy_endpoint_fails_for_react(scripted_llm: ScriptedLLM, dead_url: str) -> None:
    s = _settings(
        {"base_url": scripted_llm.base_url, "model": "scripted-llm", "policy_base_url": dead_url}
    )
    with pytest.raises(InputError) as err:
        preflight(s, check_generator=False, policy="react")
    message = str(err.value)
    assert f"cannot reach the policy endpoint {dead_url}" in message
    assert "--policy-base-url / GROUNDWORK_LLM__POLICY_BASE_URL" in message
    assert "\n" not in message
    # a planned run never calls the policy, so its endpoint is not its problem
    preflight(s, check_generator=False, policy="planned")
    # policy unknown: it counts
    with pytest.raises(InputError):
        preflight(s, check_generator=False)


def test_each_distinct_endpoint_is_checked_once(
    scripted_llm: ScriptedLLM, probes: list[str]
) -> None:
    base = scripted_llm.base_url
    other = base.replace("127.0.0.1", "localhost")  # the same server under a second name
    s = _settings(
        {
            "base_url": base,
            "model": "scripted-llm",
            "policy_base_url": other,
            "critique_model": "scripted-vlm",
        },
        candidates=2,
    )
    assert set(roles_in_use(s, "react")) == set(preflight_module.ROLES)
    preflight(s, check_generator=False, policy="react")
    assert sorted(probes) == sorted([base + "/models", other + "/models"])


def test_unknown_model_at_the_policy_endpoint(scripted_llm: ScriptedLLM) -> None:
    s = _settings(
        {
            "base_url": scripted_llm.base_url,
            "model": "scripted-llm",
            "policy_base_url": scripted_llm.base_url.replace("127.0.0.1", "localhost"),
            "policy_model": "gen-searcher-8b",
        }
    )
    with pytest.raises(InputError, match="unknown model gen-searcher-8b at the policy endpoint"):
        preflight(s, check_generator=False, policy="react")


def test_vision_roles_only_when_a_critique_model_is_set(scripted_llm: ScriptedLLM) -> None:
    s = _settings({"base_url": scripted_llm.base_url}, candidates=3)
    used = roles_in_use(s, "planned")
    assert "critique" not in used and "judge" not in used and "policy" not in used
    with_vlm = _settings({"base_url": scripted_llm.base_url, "critique_model": "v"}, candidates=1)
    assert "critique" in roles_in_use(with_vlm, "planned")
    assert "judge" not in roles_in_use(with_vlm, "planned")


def test_dead_critique_endpoint_names_its_setting(scripted_llm: ScriptedLLM, dead_url: str) -> None:
    s = _settings(
        {
            "base_url": scripted_llm.base_url,
            "model": "scripted-llm",
            "critique_model": "scripted-vlm",
            "critique_base_url": dead_url,
        }
    )
    with pytest.raises(InputError, match="cannot reach the critique endpoint") as err:
        preflight(s, check_generator=False, policy="planned")
    assert "--critique-base-url / GROUNDWORK_LLM__CRITIQUE_BASE_URL" in str(err.value)


def test_refused_policy_key_names_the_policy_key(
    scripted_llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    policy_url = scripted_llm.base_url.replace("127.0.0.1", "localhost")
    real = preflight_module.httpx.get

    def get(url: str, **kwargs: Any) -> Any:
        if url.startswith(policy_url):
            return httpx.Response(401, request=httpx.Request("GET", url))
        return real(url, **kwargs)

    monkeypatch.setattr(preflight_module.httpx, "get", get)
    s = _settings(
        {
            "base_url": scripted_llm.base_url,
            "model": "scripted-llm",
            "policy_base_url": policy_url,
            "policy_api_key": "sk-wrong",
        }
    )
    with pytest.raises(InputError, match="refused the API key") as err:
        preflight(s, check_generator=False, policy="react")
    assert "GROUNDWORK_LLM__POLICY_API_KEY" in str(err.value)
