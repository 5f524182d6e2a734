"""Issue 21: LLM failures degrade with a notice instead of failing the run (analyze, synthesize,
refine), chat intake keeps the subject with a weak model, a clarify decision without a question
falls back to the rule-made one, and rule gaps query the span and its head noun only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from agent.contracts import Gap, GapReport
from agent.gaps import find_candidates, occurs_in
from agent.llm import LLMError, invoke
from agent.stages.analyze import merge_gaps
from agent.stages.intake import looks_like_edit
from graphs import build_graph
from tests.agent.conftest import Recorder, make_settings
from tests.support.scripted_llm import ScriptedLLM
from tests.support.web import FakeDDGS, WebServer


async def _turn(graph: Any, request: str, thread: str = "t") -> dict[str, Any]:
    config: Any = {"configurable": {"thread_id": thread}, "recursion_limit": 100}
    await graph.ainvoke({"request": request}, config)
    return dict((await graph.aget_state(config)).values)


def _planned(services: Any) -> Any:
    return build_graph(
        services.settings, checkpointer=InMemorySaver(), policy="planned", services=services
    )


async def test_llm_failures_in_analyze_and_synthesize_still_research_and_make_an_image(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    fake_web: WebServer,
    recording: Recorder,
    services_factory: Any,
) -> None:
    """No GapReport and no GroundedPrompt answer (HTTP 500 each): the rule gaps are still
    researched, the prompt is used as written, and both failures are notices."""
    FakeDDGS.script["text"]["Zephyr X1 drone"] = [
        {"title": "Zephyr X1", "href": fake_web.url + "/z", "body": "an orange drone"}
    ]
    settings = make_settings(tmp_path, scripted_llm, None).merged({"llm": {"max_retries": 0}})
    state = await _turn(_planned(services_factory(settings)), "the Zephyr X1 drone over a lake")
    stages = [s["stage"] for s in state["stages"]]
    assert "research" in stages and state["image"] is not None and not state.get("error")
    assert any(o["query"] == "Zephyr X1 drone" and o["ok"] for o in state["observations"])
    assert any("gap analysis by the LLM failed" in n for n in state["notices"])
    assert any("the grounded prompt could not be written" in n for n in state["notices"])
    assert state["grounded"]["gen_prompt"] == "the Zephyr X1 drone over a lake"
    assert recording.requests[0].prompt == "the Zephyr X1 drone over a lake"


async def test_a_reply_cut_at_max_tokens_is_an_llm_error() -> None:
    class Cut:
        async def ainvoke(self, messages: Any) -> Any:
            raise openai.LengthFinishReasonError.__new__(openai.LengthFinishReasonError)

    class Chat:
        openai_api_base, model_name, max_tokens = "http://x", "m", 16

    with pytest.raises(LLMError, match="cut at its length limit"):
        await invoke(Cut(), [], Chat())  # type: ignore[arg-type]


async def test_make_it_night_stays_a_refinement_when_the_model_calls_it_new(
    tmp_path: Path, scripted_llm: ScriptedLLM, recording: Recorder, services_factory: Any
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None).merged({"llm": {"max_retries": 0}})
    graph = _planned(services_factory(settings))
    scripted_llm.add("GapReport", {"gaps": []})
    await _turn(graph, "a lighthouse at dusk")
    scripted_llm.add("Intent", {"kind": "new", "instruction": ""})  # a weak model's answer
    state = await _turn(graph, "make it night")
    assert state["intent"] == "refine"
    assert "lighthouse" in state["grounded"]["gen_prompt"]
    assert "make it night" in state["grounded"]["gen_prompt"]
    assert state["prompt"].startswith("a lighthouse at dusk")


@pytest.mark.parametrize(
    ("message", "edit"),
    [
        ("make it night", True),
        ("add snow to it", True),
        ("now in winter", True),
        ("more clouds", True),
        ("a red bicycle", False),
        ("a dog that is happy", False),
        ("draw a cat on a mat", False),
        ("the Eiffel Tower at night", False),
    ],
)
def test_edit_shaped_messages(message: str, edit: bool) -> None:
    assert looks_like_edit(message) is edit


async def test_ask_without_a_question_falls_back_to_the_rule_made_one(
    tmp_path: Path, scripted_llm: ScriptedLLM, recording: Recorder, services_factory: Any
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None, ask_questions=True)
    graph = _planned(services_factory(settings))
    scripted_llm.add("GapReport", {"gaps": []})
    scripted_llm.add("Clarification", {"ask": True, "question": "", "why": ""})
    config: Any = {"configurable": {"thread_id": "q"}}
    await graph.ainvoke({"request": "my dog on a beach"}, config)
    snapshot = await graph.aget_state(config)
    assert snapshot.next == ("ask",)
    questions = [i.value["question"] for t in snapshot.tasks for i in t.interrupts]
    assert questions and "what does it look like" in questions[0]


# -- rule gaps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "span", "queries"),
    [
        ("Jimi Hendrix famously played at Woodstock", "Jimi Hendrix", ["Jimi Hendrix"]),
        ("the Golden Gate Bridge when fog rolls in", "Golden Gate Bridge", ["Golden Gate Bridge"]),
        ("a castle in Scotland standing on a hill", "Scotland", ["Scotland"]),
        ("the Zephyr X1 drone over a lake", "Zephyr X1", ["Zephyr X1 drone", "Zephyr X1"]),
    ],
)
def test_rule_queries_are_the_span_and_its_head_noun(
    prompt: str, span: str, queries: list[str]
) -> None:
    (candidate,) = [c for c in find_candidates(prompt) if c.span == span]
    assert candidate.queries(prompt)[0] == queries


@pytest.mark.parametrize(
    "prompt", ["a teapot on a windowsill", "sunflowers in a vase", "a lighthouse on a cliff"]
)
def test_ordinary_words_are_not_rare(prompt: str) -> None:
    assert find_candidates(prompt) == []


def test_a_span_matches_whole_words_only() -> None:
    assert not occurs_in("Japan", "a Japanese garden")
    assert occurs_in("Japan", "a garden in Japan.")
    llm = GapReport(gaps=[Gap(kind="entity", span="Japan", text_queries=["Japan"])])
    report, notices = merge_gaps("a Japanese garden", llm, trust="verbatim", max_gaps=4)
    assert [g.span for g in report.gaps] == ["Japanese"]  # the rule's own gap, not "Japan"
    assert "not in the prompt" in notices[0]


def test_gated_trust_checks_the_weak_models_queries() -> None:
    prompt = "the Zephyr X1 drone with a mother and child"
    llm = GapReport(
        gaps=[
            Gap(
                kind="entity",
                span="Zephyr X1",
                text_queries=["images/mother-child.jpg", "Zephyr X1 specs", "best pizza"],
                image_queries=["http://x/y.png"],
            )
        ]
    )
    report, _ = merge_gaps(prompt, llm, trust="gated", max_gaps=4)
    (gap,) = report.gaps
    assert gap.text_queries == ["Zephyr X1 specs"]
    assert gap.image_queries == []


def test_empty_llm_gaps_are_counted_not_listed() -> None:
    llm = GapReport(gaps=[Gap(kind="entity", span=""), Gap(kind="entity", span=" ")])
    _, notices = merge_gaps("a red apple", llm, trust="gated", max_gaps=4)
    assert notices == ["ignored 2 LLM gap(s) with no words from the prompt"]
    assert "''" not in " ".join(notices)


async def test_a_graph_built_for_a_server_writes_its_run_folder(
    tmp_path: Path, scripted_llm: ScriptedLLM, recording: Recorder, services_factory: Any
) -> None:
    """`langgraph dev` runs the graph without the Runner: finish writes the folder itself."""
    services = services_factory(make_settings(tmp_path, scripted_llm, None))
    graph = build_graph(
        services.settings, checkpointer=InMemorySaver(), services=services, run_folders=True
    )
    scripted_llm.add("GapReport", {"gaps": []})
    await _turn(graph, "a red apple on a table", thread="server/../../x")
    (run_dir,) = list((tmp_path / "runs").iterdir())
    record = (run_dir / "run.json").read_text()
    assert '"status": "done"' in record and (run_dir / "image.png").exists()
    assert '"stage": "finish"' in record and (run_dir / "dossier.md").exists()


def test_the_embedded_model_is_offered_a_layout_only_for_named_positions() -> None:
    from agent.layout import several_subjects

    joined = "a cat and a dog playing in the garden"
    placed = "a cat on the left and a dog on the right"
    assert several_subjects(joined) and not several_subjects(joined, joined=False)
    assert several_subjects(placed, joined=False)
