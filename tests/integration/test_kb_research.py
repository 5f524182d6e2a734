"""The knowledge base inside a whole run (issue 8.2): a one-image KB and a text-only KB (what
`groundwork kb add` builds by default) both answer research, KB images get the run's IMG ids
beside web images without colliding, and they reach synthesis as citable references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.services import Services
from agent.settings import Settings
from graphs import build_graph
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import FakeDDGS, WebServer, install_fake_ddgs, png_bytes

pytest.importorskip("open_clip")
pytestmark = pytest.mark.slow

TEXT = (
    "# Zephyr X1\n\nThe Zephyr X1 drone has a safety-orange carbon shell and four folding "
    "rotor arms.\n\n# Coffee\n\nA flat white is an espresso drink with thin steamed milk.\n"
)
GAP = {
    "kind": "entity",
    "span": "Zephyr X1",
    "why": "new product",
    "text_queries": [],
    "image_queries": ["zephyr photo"],
    "needs_reference": True,
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.support.tiny_clip import register_tiny_clip

    return register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _build_kb(root: Path, settings: Settings, *, with_image: bool) -> None:
    from retrieval.ingest import ingest
    from retrieval.kb import KnowledgeBase

    data = root / "data"
    data.mkdir(parents=True)
    (data / "zephyr.md").write_text(TEXT, encoding="utf-8")
    if with_image:
        (data / "zephyr.png").write_bytes(png_bytes((240, 120, 10), seed=7))
    ingest(KnowledgeBase.open(settings.retrieval, create=True), [data])


def _settings(tmp_path: Path, llm: ScriptedLLM, pipeline: Path, clip: str | None) -> Settings:
    retrieval: dict[str, Any] = {"kb_dir": str(tmp_path / "kb"), "device": "cpu"}
    if clip is not None:
        retrieval["clip_model"] = clip
    return Settings.model_validate(
        {
            "llm": {"base_url": llm.base_url, "model": "scripted-llm"},
            "generator": {"model": str(pipeline), "width": 64, "height": 64, "steps": 2},
            "artifacts": {"root": str(tmp_path / "artifacts")},
            "tools": {"allow_hosts": ["127.0.0.1"], "cache_enabled": False, "timeout_s": 20},
            "retrieval": retrieval,
            "agent": {"browse_per_gap": 0},
        }
    )


async def _run(settings: Settings, thread: str) -> dict[str, Any]:
    services = Services(settings)
    saver = InMemorySaver()
    try:
        graph = build_graph(settings, checkpointer=saver, services=services)
        config: Any = {"configurable": {"thread_id": thread}}
        await graph.ainvoke({"request": "the Zephyr X1 drone over a lake"}, config)
        return dict((await graph.aget_state(config)).values)
    finally:
        await services.aclose()


async def test_one_image_kb_and_web_images_share_the_runs_ids(
    tmp_path: Path,
    tiny_pipeline: Path,
    tiny_clip: str,
    scripted_llm: ScriptedLLM,
    web: WebServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    img = web.add("/z.png", "image/png", png_bytes((20, 60, 200), seed=3))
    monkeypatch.setattr(
        FakeDDGS,
        "script",
        {"text": {}, "images": {"zephyr photo": [{"title": "Z", "image": img, "url": web.url}]}},
    )
    install_fake_ddgs()
    settings = _settings(tmp_path, scripted_llm, tiny_pipeline, tiny_clip)
    _build_kb(tmp_path, settings, with_image=True)
    scripted_llm.add("GapReport", {"gaps": [GAP]})
    scripted_llm.add(
        "GroundedPrompt",
        {
            "gen_prompt": "an orange drone",
            "reference_images": [{"img_id": "IMG_001"}, {"img_id": "IMG_002"}],
        },
    )
    state = await _run(settings, "kb-image")
    by_tool = {o["tool"]: o for o in state["observations"]}
    assert by_tool["knowledge_base"]["ok"], by_tool["knowledge_base"]["error"]
    kb_ids = {i["img_id"] for i in by_tool["knowledge_base"]["items"] if "img_id" in i}
    web_ids = {i["img_id"] for i in by_tool["image_search"]["items"]}
    assert kb_ids and web_ids and not (kb_ids & web_ids)
    assert kb_ids | web_ids <= set(state["image_ids"])  # both reach the run's registry
    assert len(set(state["image_ids"].values())) == len(state["image_ids"])
    # both kinds are offered to synthesis as citable references
    sent = scripted_llm.calls("GroundedPrompt")[0]["messages"][-1]["content"]
    assert all(i in sent for i in kb_ids | web_ids)
    assert [r["img_id"] for r in state["grounded"]["reference_images"]] == ["IMG_001", "IMG_002"]


async def test_text_only_kb_answers_research(
    tmp_path: Path, tiny_pipeline: Path, scripted_llm: ScriptedLLM
) -> None:
    settings = _settings(tmp_path, scripted_llm, tiny_pipeline, None)
    settings = settings.merged({"tools": {"text_provider": "none", "image_provider": "none"}})
    _build_kb(tmp_path, settings, with_image=False)
    scripted_llm.add("GapReport", {"gaps": [{**GAP, "image_queries": []}]})
    scripted_llm.add("GroundedPrompt", {"gen_prompt": "a safety-orange drone with four arms"})
    state = await _run(settings, "kb-text")
    kb = next(o for o in state["observations"] if o["tool"] == "knowledge_base")
    assert kb["ok"], kb["error"]
    assert any("safety-orange carbon shell" in i.get("text", "") for i in kb["items"])
    sent = scripted_llm.calls("GroundedPrompt")[0]["messages"][-1]["content"]
    assert "safety-orange carbon shell" in sent
