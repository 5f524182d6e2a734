"""Fixtures for the react policy and trace tests: settings pointing everything into tmp, the
scripted LLM on loopback, a loopback web (pages and images) behind a fake `ddgs`, and a
generator that records what it was asked (the tiny diffusers pipeline where the pixels path
matters, a recording noop generator where only the agent's loop does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.services import Services
from agent.settings import Settings
from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GenerationResult, ProgressCallback
from generators.capabilities import GeneratorCapabilities
from generators.noop import NoopGenerator
from graphs import build_graph
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import FakeDDGS, WebServer, install_fake_ddgs, png_bytes

TODAY = date(2026, 3, 14)

ARTICLE = """<html><head><title>Zephyr X1 review</title></head><body>
<article><h1>Zephyr X1 review</h1>
<p>Our team flew it for a week over the coast and through two storms.</p>
<p>The Zephyr X1 drone has a safety-orange carbon shell and four folding rotor arms.</p>
<p>Battery life was about forty minutes in mild wind.</p></article></body></html>"""


def make_settings(
    tmp_path: Path, llm: ScriptedLLM, tiny_pipeline: Path | None, **agent: Any
) -> Settings:
    return Settings.model_validate(
        {
            "llm": {"base_url": llm.base_url, "model": "scripted-llm"},
            "generator": {
                "model": str(tiny_pipeline or tmp_path / "no-model"),
                "width": 64,
                "height": 64,
                "steps": 2,
            },
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {"allow_hosts": ["127.0.0.1"], "cache_enabled": False, "timeout_s": 10},
            "retrieval": {"kb_dir": str(tmp_path / "no-kb")},
            "agent": agent,
            "runs_dir": str(tmp_path / "runs"),
            "traces_dir": str(tmp_path / "traces"),
            "checkpoint_db": str(tmp_path / "checkpoints.sqlite"),
        }
    )


@pytest.fixture(autouse=True)
def pinned_date(monkeypatch: pytest.MonkeyPatch) -> date:
    import agent.stages.react

    monkeypatch.setattr(agent.stages.react, "today", lambda: TODAY)
    return TODAY


@pytest.fixture
def fake_web(monkeypatch: pytest.MonkeyPatch, web: WebServer) -> WebServer:
    a = web.add("/a.png", "image/png", png_bytes((200, 100, 0), seed=3))
    b = web.add("/b.png", "image/png", png_bytes((20, 100, 200), seed=4))
    c = web.add("/c.png", "image/png", png_bytes((20, 200, 40), seed=5))
    web.add("/z", "text/html; charset=utf-8", ARTICLE.encode())
    monkeypatch.setattr(
        FakeDDGS,
        "script",
        {
            "text": {
                "zephyr specs": [
                    {"title": "Zephyr X1 specs", "href": web.url + "/z", "body": "orange shell"}
                ],
                "zephyr colours": [{"title": "Colours", "href": web.url + "/z", "body": "orange"}],
            },
            "images": {
                "zephyr photo": [
                    {"title": "Zephyr X1 in flight", "image": a, "url": web.url + "/z"},
                    {"title": "Zephyr X1 folded", "image": b, "url": web.url + "/z"},
                ],
                "lake bled": [{"title": "Lake Bled island", "image": c, "url": web.url}],
            },
        },
    )
    install_fake_ddgs()
    return web


class RecordingGenerator(NoopGenerator):
    """The noop generator that keeps every request, with chosen capabilities."""

    def __init__(self, store: ArtifactStore, *, keeps_ordinals: bool = False) -> None:
        super().__init__(store)
        self.requests: list[GenerationRequest] = []
        self.keeps_ordinals = keeps_ordinals

    async def generate(  # type: ignore[override]
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        self.requests.append(request)
        return await super().generate(request, on_progress)

    async def capabilities(self, model: str | None = None) -> GeneratorCapabilities:
        return GeneratorCapabilities(
            model="recording-edit" if self.keeps_ordinals else "recording-t2i",
            takes_references=self.keeps_ordinals,
            reference_mode="edit_image" if self.keeps_ordinals else "none",
            max_references=3 if self.keeps_ordinals else 0,
            keeps_ordinal_phrases=self.keeps_ordinals,
        )


class Recorder:
    """Every Services made in a test gets a RecordingGenerator; `keeps_ordinals` picks its
    capabilities (set before the run)."""

    def __init__(self) -> None:
        self.keeps_ordinals = False
        self.generators: list[RecordingGenerator] = []

    @property
    def requests(self) -> list[GenerationRequest]:
        return [r for g in self.generators for r in g.requests]


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    made: dict[int, RecordingGenerator] = {}

    def generator(self: Services) -> RecordingGenerator:
        if id(self) not in made:
            made[id(self)] = RecordingGenerator(self.store, keeps_ordinals=recorder.keeps_ordinals)
            recorder.generators.append(made[id(self)])
        return made[id(self)]

    monkeypatch.setattr(Services, "generator", generator)
    return recorder


@pytest.fixture
async def services_factory() -> AsyncIterator[Any]:
    made: list[Services] = []

    def make(settings: Settings) -> Services:
        s = Services(settings)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose()


async def run_graph(
    services: Services, request: str, *, thread: str = "t", policy: str = "react"
) -> dict[str, Any]:
    graph = build_graph(
        services.settings,
        checkpointer=InMemorySaver(),
        policy=policy,  # type: ignore[arg-type]
        services=services,
    )
    config: Any = {"configurable": {"thread_id": thread}, "recursion_limit": 200}
    await graph.ainvoke({"request": request}, config)
    return dict((await graph.aget_state(config)).values)


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    """A scripted reply with one OpenAI tool call."""
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def sent_messages(llm: ScriptedLLM, index: int) -> list[dict[str, Any]]:
    """The messages of the index-th policy request ("text" schema)."""
    return list(llm.calls("text")[index]["messages"])
