"""Issue 21.10, agent side: with the web unreachable, every tool call fails on its own row, but
the run says so once (one notice, the reason from the most detailed error), in both policies,
and again once in the next run on the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.services import Services
from agent.settings import Settings
from tests.agent.conftest import Recorder, make_settings, run_graph, tool_call
from tests.support.scripted_llm import ScriptedLLM
from tools.observations import SearchHit
from tools.providers.base import ImageCandidate, ProviderError
from tools.toolkit import Toolkit

GAP = {
    "kind": "entity",
    "span": "Zephyr X1 drone",
    "why": "new product",
    "text_queries": ["zephyr specs", "zephyr colours"],
    "image_queries": ["zephyr photo"],
    "needs_reference": True,
}
DNS = "cannot resolve 'duckduckgo.com': [Errno -3] Temporary failure in name resolution"


class OfflineProvider:
    """A search provider on a machine with no network: every call says offline."""

    name = "ddgs"

    def __init__(self) -> None:
        self.calls = 0

    async def text(self, query: str, max_results: int) -> list[SearchHit]:
        self.calls += 1
        raise ProviderError(DNS, offline=True)

    async def images(self, query: str, max_results: int) -> list[ImageCandidate]:
        self.calls += 1
        raise ProviderError(DNS, offline=True)

    async def aclose(self) -> None:
        return None


def _offline(services_factory: Any, settings: Settings) -> tuple[Services, OfflineProvider]:
    services: Services = services_factory(settings)
    provider = OfflineProvider()
    services._toolkit = Toolkit(
        settings.tools,
        services.store,
        retrieval=settings.retrieval,
        provider_factory=lambda name: provider,
    )
    return services, provider


def _offline_notices(state: dict[str, Any]) -> list[str]:
    return [n for n in state.get("notices") or [] if "the web is unavailable" in n]


async def test_planned_research_states_offline_once_per_run(
    tmp_path: Path, scripted_llm: ScriptedLLM, recording: Recorder, services_factory: Any
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None)
    services, provider = _offline(services_factory, settings)
    for thread in ("first", "second"):
        scripted_llm.add("GapReport", {"gaps": [GAP]})
        scripted_llm.add("GroundedPrompt", {"gen_prompt": "an orange drone"})
        state = await run_graph(services, "a Zephyr X1 drone", thread=thread, policy="planned")
        failed = [o for o in state["observations"] if not o["ok"]]
        assert len(failed) == 3 == len(state["observations"])  # each call on its own row
        said = _offline_notices(state)
        assert len(said) == 1, state["notices"]
        assert "3 web tool calls failed" in said[0]
        if thread == "first":
            assert "Temporary failure in name resolution" in said[0]
        else:  # the toolkit already said why in the last run; this run still says it once
            assert "see the first" not in said[0]
    assert provider.calls >= 1


async def test_react_states_offline_once_however_many_calls_fail(
    tmp_path: Path, scripted_llm: ScriptedLLM, recording: Recorder, services_factory: Any
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None)
    services, _ = _offline(services_factory, settings)
    scripted_llm.add(
        "text",
        tool_call("search", queries=["zephyr specs"]),
        tool_call("image_search", query="zephyr photo"),
        tool_call("search", queries=["zephyr colours", "zephyr x1 battery"]),
        '<answer>{"gen_prompt": "an orange drone over a lake"}</answer>',
    )
    state = await run_graph(services, "the Zephyr X1 drone over a lake")
    assert [o["ok"] for o in state["observations"]] == [False] * 4
    said = _offline_notices(state)
    assert len(said) == 1, state["notices"]
    assert "Temporary failure in name resolution" in said[0]
