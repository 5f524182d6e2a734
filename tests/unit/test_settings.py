"""Settings precedence: defaults < env < CLI flags < per-run context; no env read after that."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import RunContext, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("GROUNDWORK_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_work_offline_without_configuration() -> None:
    s = Settings()
    assert s.llm.base_url is None  # the embedded model
    assert s.generator.model == "stabilityai/sd-turbo"
    assert s.llm.critique_model is None
    assert s.agent.prompt_max_chars == 2000


def test_env_prefix_and_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_GENERATOR__MODEL", "/models/sdxl")
    monkeypatch.setenv("GROUNDWORK_LLM__ANALYZE_MODEL", "qwen-small")
    monkeypatch.setenv("GROUNDWORK_LLM__MODEL", "qwen-big")
    s = Settings()
    assert s.generator.model == "/models/sdxl"
    assert s.llm.model_for("analyze") == "qwen-small"
    assert s.llm.model_for("synthesize") == "qwen-big"


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_GENERATOR__SEED", "7")
    monkeypatch.setenv("GROUNDWORK_GENERATOR__WIDTH", "768")
    s = Settings().merged({"generator": {"seed": 42, "width": None}})
    assert s.generator.seed == 42  # flag wins
    assert s.generator.width == 768  # unset flag keeps env


def test_run_context_overrides_and_env_cannot_creep_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_AGENT__MAX_ROUNDS", "5")
    base = Settings()
    monkeypatch.setenv("GROUNDWORK_AGENT__MAX_ROUNDS", "9")  # changed after start: ignored
    run = RunContext(max_rounds=1, seed=3, critique_model="vlm").apply(base)
    assert run.agent.max_rounds == 1
    assert run.generator.seed == 3
    assert run.llm.critique_model == "vlm"
    assert RunContext().apply(base) is base
    assert RunContext(width=320).apply(base).agent.max_rounds == 5


def test_secret_key_is_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDWORK_LLM__API_KEY", "sk-very-secret")
    s = Settings()
    assert "sk-very-secret" not in repr(s)
    assert s.llm.api_key.get_secret_value() == "sk-very-secret"
