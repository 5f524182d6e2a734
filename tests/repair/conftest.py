"""Fixtures for the repair loop, best-of-N, layouts, prompt budget and clarifying questions:
the real graph and Runner, the scripted OpenAI-compatible server (LLM and VLM), the tiny
diffusers pipeline, an in-memory checkpointer, and no web (research tools are off)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.services import Services
from agent.settings import Settings
from generators.base import GenerationRequest
from graphs.runner import Runner
from tests.support.scripted_llm import ScriptedLLM

NO_GAPS: dict[str, Any] = {"gaps": []}


@pytest.fixture
def settings(tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM) -> Settings:
    return Settings.model_validate(
        {
            "llm": {
                "base_url": scripted_llm.base_url,
                "model": "scripted-llm",
                "critique_model": "scripted-vlm",
                "max_retries": 0,  # an unscripted answer fails at once, not after backoff
            },
            "generator": {"model": str(tiny_pipeline), "width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {"text_provider": "none", "image_provider": "none", "cache_enabled": False},
            "retrieval": {"kb_dir": str(tmp_path / "no-kb")},
            "runs_dir": str(tmp_path / "runs"),
            "traces_dir": str(tmp_path / "traces"),
            "checkpoint_db": str(tmp_path / "locks.sqlite"),
        }
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    s = Services(settings)
    yield s
    await s.aclose()


@pytest.fixture
async def runner(services: Services) -> AsyncIterator[Runner]:
    async with Runner(services.settings, services, checkpointer=InMemorySaver()) as r:
        yield r


@pytest.fixture
def requests_seen(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[GenerationRequest]:
    """Every request the generator receives (it still makes the image)."""
    generator: Any = services.generator()
    seen: list[GenerationRequest] = []
    generate, generate_many = generator.generate, generator.generate_many

    async def recording(request: GenerationRequest, *args: Any, **kwargs: Any) -> Any:
        seen.append(request)
        return await generate(request, *args, **kwargs)

    async def recording_many(request: GenerationRequest, *args: Any, **kwargs: Any) -> Any:
        seen.append(request)
        return await generate_many(request, *args, **kwargs)

    monkeypatch.setattr(generator, "generate", recording)
    monkeypatch.setattr(generator, "generate_many", recording_many)
    return seen
