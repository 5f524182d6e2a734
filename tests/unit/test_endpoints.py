"""Per-role LLM endpoints (issue 18): policy, helper, critic and judge each have their own
base_url/model/key; configurations written before keep their meaning; a new role is one entry."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.services import Services
from agent.settings import ROLES, LLMSettings, RoleSpec, Settings, role_spec
from core.errors import GroundworkError

HELPERS = ("intake", "analyze", "clarify", "synthesize", "refine", "checklist", "shorten")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("GROUNDWORK_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_old_configurations_keep_their_meaning() -> None:
    llm = LLMSettings(
        base_url="http://main/v1",
        model="big",
        analyze_model="small",
        critique_model="vlm",
        critique_base_url="http://vlm/v1",
        api_key=SecretStr("k"),
    )
    assert llm.endpoint_for("analyze") == ("http://main/v1", "small", "k")
    assert llm.endpoint_for("synthesize") == ("http://main/v1", "big", "k")
    assert llm.endpoint_for("policy") == ("http://main/v1", "big", "k")
    assert llm.endpoint_for("critique") == ("http://vlm/v1", "vlm", "k")
    assert llm.endpoint_for("judge") == ("http://vlm/v1", "vlm", "k")
    # the old helpers still answer
    assert llm.model_for("analyze") == "small" and llm.base_url_for("critique") == "http://vlm/v1"


def test_defaults_send_text_roles_to_the_embedded_server() -> None:
    llm = LLMSettings()
    for role, spec in ROLES.items():
        if not spec.vision:
            assert llm.endpoint_for(role).base_url is None, role
    assert llm.uses_embedded()


def test_policy_endpoint_moves_only_the_policy() -> None:
    llm = LLMSettings(
        base_url="http://shared/v1",
        model="helper-llm",
        critique_model="vlm",
        policy_base_url="http://trained/v1",
        policy_model="gen-searcher-8b",
        policy_api_key=SecretStr("policy-key"),
        api_key=SecretStr("shared-key"),
    )
    assert llm.endpoint_for("policy") == ("http://trained/v1", "gen-searcher-8b", "policy-key")
    for role in (*HELPERS, "critique", "judge"):
        endpoint = llm.endpoint_for(role)
        assert endpoint.base_url == "http://shared/v1", role
        assert endpoint.api_key == "shared-key", role
        assert endpoint.model != "gen-searcher-8b", role


def test_each_group_has_its_own_endpoint() -> None:
    llm = LLMSettings(
        base_url="http://default/v1",
        helper_base_url="http://helper/v1",
        helper_model="h",
        helper_api_key=SecretStr("hk"),
        critique_base_url="http://critic/v1",
        critique_model="c",
        critique_api_key=SecretStr("ck"),
        judge_base_url="http://judge/v1",
        judge_model="j",
        judge_api_key=SecretStr("jk"),
    )
    for role in HELPERS:
        assert llm.endpoint_for(role) == ("http://helper/v1", "h", "hk"), role
    assert llm.endpoint_for("critique") == ("http://critic/v1", "c", "ck")
    assert llm.endpoint_for("judge") == ("http://judge/v1", "j", "jk")
    assert llm.endpoint_for("policy") == ("http://default/v1", "default", "not-needed")
    assert llm.uses_embedded() is False


def test_judge_falls_back_to_the_critic_then_the_default() -> None:
    llm = LLMSettings(base_url="http://default/v1", critique_model="vlm")
    assert llm.endpoint_for("judge") == ("http://default/v1", "vlm", "not-needed")
    llm = LLMSettings(base_url="http://default/v1", critique_model="vlm", judge_model="judge")
    assert llm.endpoint_for("judge").model == "judge"
    assert llm.endpoint_for("critique").model == "vlm"


def test_env_sets_a_role_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_LLM__POLICY_BASE_URL", "http://trained/v1")
    monkeypatch.setenv("GROUNDWORK_LLM__POLICY_API_KEY", "sk-policy")
    s = Settings()
    assert s.llm.endpoint_for("policy").base_url == "http://trained/v1"
    assert "sk-policy" not in repr(s)


def test_unknown_role_is_a_clear_error() -> None:
    with pytest.raises(GroundworkError, match="unknown LLM role 'summarize'.*ROLES"):
        LLMSettings().endpoint_for("summarize")


def test_a_new_role_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ROLES, "caption", RoleSpec("helper", model_field="synthesize_model"))
    llm = LLMSettings(base_url="http://x/v1", helper_model="h", synthesize_model="s")
    assert llm.endpoint_for("caption") == ("http://x/v1", "s", "not-needed")
    assert role_spec("caption").group == "helper"


def test_services_route_each_role_to_its_endpoint(tmp_path: Path) -> None:
    settings = Settings().merged(
        {
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "llm": {
                "base_url": "http://shared/v1",
                "model": "helper-llm",
                "policy_base_url": "http://trained/v1",
                "policy_model": "trained",
                "policy_api_key": "pk",
                "critique_model": "vlm",
            },
        }
    )
    services = Services(settings)

    async def endpoints() -> dict[str, tuple[str, str, str, bool]]:
        return {role: await services._endpoint(role, settings) for role in ROLES}

    got = asyncio.run(endpoints())
    assert got["policy"] == ("http://trained/v1", "trained", "pk", False)
    assert got["synthesize"] == ("http://shared/v1", "helper-llm", "not-needed", False)
    assert got["critique"] == ("http://shared/v1", "vlm", "not-needed", False)
    assert services.embedded(settings) is False
