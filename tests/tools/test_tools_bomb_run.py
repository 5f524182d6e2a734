"""Issue 22.1 end to end: a planned run whose image search returns a bomb of every format
(next to one good image) still researches, references the good image and ends with an image.
Real HTTP to the scripted LLM and the loopback web server, the tiny diffusers pipeline."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.services import Services
from agent.settings import Settings
from graphs import build_graph
from tests.support.hostile import BOMBS
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import FakeDDGS, WebServer, png_bytes

pytestmark = pytest.mark.slow

GAP = {
    "kind": "entity",
    "span": "Zephyr X1 drone",
    "why": "new product",
    "text_queries": [],
    "image_queries": ["zephyr photo"],
    "needs_reference": True,
}


@pytest.mark.parametrize("seed", [0])
async def test_a_run_with_a_bomb_of_each_format_among_the_results_ends_with_an_image(
    seed: int,
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    web: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ddgs

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = [
        {"title": f"bomb {kind}", "image": web.add(f"/bomb-{kind}", "image/png", make(rng))}
        for kind, make in sorted(BOMBS.items())
    ]
    good = web.add("/good.png", "image/png", png_bytes((200, 100, 0), seed=3))
    rows.insert(rng.randrange(len(rows) + 1), {"title": "Z photo", "image": good})
    monkeypatch.setattr(FakeDDGS, "script", {"text": {}, "images": {"zephyr photo": rows}})
    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    settings = Settings.model_validate(
        {
            "llm": {"base_url": scripted_llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(tiny_pipeline), "width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {
                "allow_hosts": ["127.0.0.1"],
                "cache_enabled": False,
                "timeout_s": 10,
                "max_images_per_query": 2,
                "image_candidates_factor": 5,
            },
            "retrieval": {"kb_dir": str(tmp_path / "no-kb")},
        }
    )
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add(
        "GroundedPrompt",
        {"gen_prompt": "an orange drone", "reference_images": [{"img_id": "IMG_001"}]},
    )
    services = Services(settings)
    try:
        graph = build_graph(settings, checkpointer=InMemorySaver(), services=services)
        config: Any = {"configurable": {"thread_id": f"bombs-{seed}"}}
        await graph.ainvoke({"request": "a Zephyr X1 drone"}, config)
        state = dict((await graph.aget_state(config)).values)
    finally:
        await services.aclose()
    (obs,) = [o for o in state["observations"] if o["tool"] == "image_search"]
    assert obs["ok"], obs["error"]
    assert [item["url"] for item in obs["items"]] == [good]
    assert sum("/bomb-" in n for n in obs["notes"]) >= len(BOMBS) - 1  # notes are capped at 12
    assert state["image"] is not None
    assert [r["img_id"] for r in state["grounded"]["reference_images"]] == ["IMG_001"]
