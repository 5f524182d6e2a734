"""The planned graph in-process: routing, loop bounds, budgets, failures that must not end a
run, chat refinement on one thread, and per-run context overrides. Real HTTP to the scripted
LLM server and the loopback web server, the tiny diffusers pipeline, an in-memory checkpointer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.services import Services
from agent.settings import RunContext, Settings
from agent.state import RunOutput
from graphs import build_graph
from tests.support.scripted_llm import ScriptedLLM
from tests.support.stage_paths import expected_stages
from tests.support.web import FakeDDGS, WebServer, install_fake_ddgs, png_bytes

pytestmark = pytest.mark.slow

GAP = {
    "kind": "entity",
    "span": "Zephyr X1 drone",
    "why": "new product",
    "text_queries": ["zephyr specs", "zephyr colours"],
    "image_queries": ["zephyr photo"],
    "needs_reference": True,
}


ARTICLE = """<html><head><title>Zephyr X1 review</title></head><body>
<nav>Home | Reviews | Shop</nav>
<article><h1>Zephyr X1 review</h1>
<p>Our team flew it for a week over the coast and through two storms.</p>
<p>The Zephyr X1 drone has a safety-orange carbon shell and four folding rotor arms.</p>
<p>Battery life was about forty minutes in mild wind.</p></article>
<footer>Copyright</footer></body></html>"""


@pytest.fixture
def settings(tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM) -> Settings:
    return Settings.model_validate(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline), "width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {"allow_hosts": ["127.0.0.1"], "cache_enabled": False, "timeout_s": 10},
            "retrieval": {"kb_dir": str(tmp_path / "no-kb")},
        }
    )


@pytest.fixture
def fake_web(monkeypatch: pytest.MonkeyPatch, web: WebServer) -> WebServer:
    img = web.add("/z.png", "image/png", png_bytes((200, 100, 0), seed=3))
    web.add("/z", "text/html; charset=utf-8", ARTICLE.encode())
    monkeypatch.setattr(
        FakeDDGS,
        "script",
        {
            "text": {"zephyr specs": [{"title": "Z", "href": web.url + "/z", "body": "orange"}]},
            "images": {"zephyr photo": [{"title": "Z photo", "image": img, "url": web.url}]},
        },
    )
    install_fake_ddgs()
    return web


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    s = Services(settings)
    yield s
    await s.aclose()


async def _run(
    services: Services, request: str, thread: str = "t", context: RunContext | None = None
) -> dict[str, Any]:
    graph = build_graph(services.settings, checkpointer=_SAVER, services=services)
    config: Any = {"configurable": {"thread_id": thread}}
    output = await graph.ainvoke({"request": request}, config, context=context)
    assert set(output) <= set(RunOutput.__annotations__)  # the narrow output schema
    # Internal counters (tool_calls, intent) are checked on the full checkpointed state.
    return dict((await graph.aget_state(config)).values)


_SAVER = InMemorySaver()


def _stages(state: dict[str, Any], turn: int | None = None) -> list[str]:
    return [s["stage"] for s in state["stages"] if turn is None or s["turn"] == turn]


async def test_no_gaps_skips_research_and_synthesis_llm(
    services: Services, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", {"gaps": []})
    state = await _run(services, "a red apple on a table", thread="nogaps")
    assert _stages(state) == expected_stages(
        "planned", "intake", "analyze", "synthesize", "critique", "finish"
    )
    assert state["grounded"]["gen_prompt"] == "a red apple on a table"
    assert scripted_llm.calls("GroundedPrompt") == []


async def test_critique_loop_is_bounded_by_max_rounds(
    settings: Settings, scripted_llm: ScriptedLLM, fake_web: WebServer
) -> None:
    bounded = settings.merged(
        {"llm": {"critique_model": "scripted-vlm"}, "agent": {"max_rounds": 2}}
    )
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "an orange drone"})
    # The grounded prompt came without requirements: a checklist is written for the critic.
    scripted_llm.add(
        "PromptPlan", {"requirements": [{"text": "the drone is orange", "kind": "attribute"}]}
    )

    def failing(score: float) -> dict[str, Any]:
        check = {"requirement": "an orange drone", "passed": False, "reason": "wrong colour"}
        return {"checks": [check], "score": score, "edit_instruction": "make it orange"}

    # The score improves every round, so only the round budget stops the loop.
    scripted_llm.add("Verdict", failing(0.1), failing(0.2), failing(0.3), failing(0.4))
    services = Services(bounded)
    try:
        state = await _run(services, "a Zephyr X1 drone", thread="bounded")
    finally:
        await services.aclose()
    assert [r["action"] for r in state["rounds"]] == ["img2img", "finish"]
    assert len(scripted_llm.calls("Verdict")) == 2
    assert any("repair rounds used up (2)" in n for n in state["notices"])


async def test_tool_budget_caps_research_and_says_what_was_skipped(
    settings: Settings, scripted_llm: ScriptedLLM, fake_web: WebServer
) -> None:
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "an orange drone"})
    services = Services(settings.merged({"agent": {"max_tool_calls": 2}}))
    try:
        state = await _run(services, "a Zephyr X1 drone", thread="budget")
    finally:
        await services.aclose()
    assert state["tool_calls"] == 2
    assert len(state["observations"]) == 2
    skipped = "skipped 2: image_search 'zephyr photo', browse 'Zephyr X1 drone'"
    assert any(skipped in n for n in state["notices"])


async def test_research_reads_the_top_result_page_for_facts(
    services: Services, scripted_llm: ScriptedLLM, fake_web: WebServer
) -> None:
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "an orange drone"})
    state = await _run(services, "a Zephyr X1 drone", thread="browse")
    tools = [o["tool"] for o in state["observations"]]
    assert tools.count("browse") == 1 and tools.index("browse") == len(tools) - 1
    browse = state["observations"][-1]
    assert browse["ok"], browse["error"]
    assert "safety-orange carbon shell" in browse["items"][0]["text"]
    assert state["tool_calls"] == 4
    sent = scripted_llm.calls("GroundedPrompt")[0]["messages"][-1]["content"]
    assert "safety-orange carbon shell" in sent


async def test_failing_tools_do_not_end_the_run(
    services: Services, scripted_llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddgs
    from ddgs.exceptions import DDGSException

    class BrokenDDGS(FakeDDGS):
        def text(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise DDGSException("provider exploded")

        def images(self, query: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise DDGSException("provider exploded")

    monkeypatch.setattr(ddgs, "DDGS", BrokenDDGS)
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    state = await _run(services, "a Zephyr X1 drone", thread="broken")
    assert state["observations"] and all(not o["ok"] for o in state["observations"])
    assert all(o["error"] for o in state["observations"])
    assert state["image"] is not None  # the run went on and made an image
    # With no evidence, synthesis is not asked to invent: the prompt is used as written.
    assert scripted_llm.calls("GroundedPrompt") == []
    assert state["grounded"]["gen_prompt"] == "a Zephyr X1 drone"
    assert any("research found nothing" in n for n in state["notices"])


async def test_invented_reference_ids_are_dropped_with_a_notice(
    services: Services, scripted_llm: ScriptedLLM, fake_web: WebServer
) -> None:
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add(
        "GroundedPrompt",
        {
            "gen_prompt": "an orange drone",
            "reference_images": [
                {"img_id": "IMG_001"},
                {"img_id": "IMG_042"},
                {"img_id": "image one"},  # malformed: SmolLM2 does this; must not fail the stage
            ],
        },
    )
    state = await _run(services, "a Zephyr X1 drone", thread="refs")
    assert [r["img_id"] for r in state["grounded"]["reference_images"]] == ["IMG_001"]
    assert any("IMG_042, image one" in n for n in state["notices"])
    assert len(scripted_llm.calls("GroundedPrompt")) == 1  # no repair round was needed


async def test_chat_refines_the_last_image_on_the_same_thread(
    services: Services, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", {"gaps": []}, {"gaps": []})
    first = await _run(services, "a lighthouse on a cliff", thread="chat")
    first_sha = first["image"]["image"]["sha256"]

    scripted_llm.add("Intent", {"kind": "refine", "instruction": "make it night"})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a lighthouse on a cliff at night"})
    second = await _run(services, "make it night", thread="chat")
    assert second["turn"] == 2 and second["intent"] == "refine"
    assert _stages(second, turn=2) == expected_stages(
        "planned", "intake", "refine", "critique", "finish"
    )
    assert second["image"]["mode"] == "img2img"
    assert second["image"]["image"]["sha256"] != first_sha
    assert "make it night" in scripted_llm.calls("GroundedPrompt")[0]["messages"][-1]["content"]

    scripted_llm.add("Intent", {"kind": "new"})
    third = await _run(services, "a red bicycle", thread="chat")
    assert third["intent"] == "new" and third["prompt"] == "a red bicycle"
    assert _stages(third, turn=3)[:2] == ["intake", "analyze"]
    assert third["image"]["mode"] == "text2img"


async def test_run_context_overrides_settings_for_one_run(
    services: Services, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", {"gaps": []})
    state = await _run(
        services, "a red apple", thread="ctx", context=RunContext(width=96, height=64, seed=9)
    )
    image = state["image"]
    assert (image["image"]["width"], image["image"]["height"]) == (96, 64)
    assert image["seed"] == 9
    assert services.settings.generator.width == 64  # the process settings are untouched


async def test_a_weak_rewrite_that_loses_the_subject_falls_back_with_a_notice(
    services: Services, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.add("GapReport", {"gaps": []})
    await _run(services, "a red lighthouse on a rocky cliff above a stormy sea", thread="weak")
    scripted_llm.add("Intent", {"kind": "refine", "instruction": "make it night"})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a dark night sky"})  # the subject is gone
    second = await _run(services, "make it night", thread="weak")
    gen_prompt = second["grounded"]["gen_prompt"]
    assert "lighthouse" in gen_prompt and gen_prompt.startswith("make it night")
    assert any("lost the previous prompt's content" in n for n in second["notices"])


async def test_the_browse_wave_goes_through_the_registry_within_the_tool_budget(
    settings: Settings,
    scripted_llm: ScriptedLLM,
    web: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    from tools.registry import TOOLS

    for path in ("/a", "/b", "/c"):
        web.add(path, "text/html; charset=utf-8", ARTICLE.encode())
    hits = [{"title": p, "href": web.url + p, "body": "orange"} for p in ("/a", "/b", "/c")]
    # both searches find the same pages: each page is read once
    monkeypatch.setattr(
        FakeDDGS, "script", {"text": {"zephyr specs": hits, "zephyr colours": hits}, "images": {}}
    )
    install_fake_ddgs()
    spec = TOOLS["browse"]
    ran: list[str] = []

    async def counted(tk: Any, args: Any, reg: Any) -> Any:
        ran.append(args.url)
        return await spec.run(tk, args, reg)

    monkeypatch.setitem(TOOLS, "browse", replace(spec, run=counted))
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "an orange drone"})
    # 3 first-wave calls (two searches, one image search), then room for 2 of the 3 pages
    budgeted = settings.merged({"agent": {"max_tool_calls": 5, "browse_per_gap": 3}})
    services = Services(budgeted)
    try:
        state = await _run(services, "a Zephyr X1 drone", thread="browse-budget")
    finally:
        await services.aclose()
    tools = [o["tool"] for o in state["observations"]]
    assert tools.count("browse") == 2 and state["tool_calls"] == 5
    assert sorted(ran) == [web.url + "/a", web.url + "/b"]  # run by the registry's spec
    assert any("skipped 1: browse 'Zephyr X1 drone'" in n for n in state["notices"])
