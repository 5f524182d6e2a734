"""The react policy end to end (openai profile): real HTTP to the scripted LLM server, the
loopback web behind a fake ddgs, real tools, and the tiny diffusers pipeline (or a recording
noop generator where only the loop is under test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.profiles import OPENAI
from tests.agent.conftest import (
    Recorder,
    make_settings,
    run_graph,
    sent_messages,
    tool_call,
)
from tests.support.scripted_llm import ScriptedLLM
from tests.support.stage_paths import expected_stages
from tests.support.web import WebServer
from tools.registry import TOOLS

PROMPT = "the Zephyr X1 drone over a lake"


def _answer(gen_prompt: str, refs: list[tuple[str, str]]) -> str:
    import json

    body = {
        "gen_prompt": gen_prompt,
        "reference_images": [{"img_id": i, "note": n} for i, n in refs],
    }
    return f"<think>enough</think>\n<answer>{json.dumps(body)}</answer>"


def _stages(state: dict[str, Any]) -> list[str]:
    return [s["stage"] for s in state["stages"]]


@pytest.mark.slow
async def test_react_searches_browses_picks_a_reference_and_answers(
    tmp_path: Path,
    tiny_pipeline: Path,
    scripted_llm: ScriptedLLM,
    fake_web: WebServer,
    services_factory: Any,
) -> None:
    """Vision policy: search, a refused duplicate, image_search (its images shown as images),
    browse, then an answer whose reference reaches the tiny pipeline."""
    settings = make_settings(tmp_path, scripted_llm, tiny_pipeline).merged(
        {"llm": {"policy_vision": True}}
    )
    scripted_llm.add(
        "text",
        tool_call("search", queries=["zephyr specs"]),
        tool_call("search", queries=["Zephyr   SPECS"]),  # the same query: refused
        tool_call("image_search", query="zephyr photo"),
        tool_call("browse", url=fake_web.url + "/z", query="zephyr colours"),
        _answer(
            "The drone from the first reference image, safety-orange, over a calm lake",
            [("IMG_001", "an orange quadcopter with folding arms")],
        ),
    )
    state = await run_graph(services_factory(settings), PROMPT)

    assert _stages(state) == expected_stages(
        "react", "intake", *["policy", "tools"] * 4, "policy", "answer", "critique", "finish"
    )
    assert state["tool_calls"] == 3  # the refused duplicate does not count
    tools = [(o["tool"], o["ok"]) for o in state["observations"]]
    assert tools == [
        ("search", True),
        ("search", False),
        ("image_search", True),
        ("browse", True),
    ]
    assert "duplicate call refused" in state["observations"][1]["error"]
    assert "safety-orange carbon shell" in state["observations"][3]["items"][0]["text"]

    # What the model was sent, turn by turn.
    first = scripted_llm.calls("text")[0]
    # Every registered tool is offered, but the knowledge base only when there is one.
    offered = [n for n, spec in TOOLS.items() if not spec.requires_kb]
    assert [t["function"]["name"] for t in first["tools"]] == offered
    assert first["messages"][1] == {"role": "user", "content": f"Image prompt: {PROMPT}"}
    second = sent_messages(scripted_llm, 1)
    call_id = second[-2]["tool_calls"][0]["id"]
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == call_id
    assert "Zephyr X1 specs" in second[-1]["content"]
    assert "duplicate call refused" in sent_messages(scripted_llm, 2)[-1]["content"]
    after_images = sent_messages(scripted_llm, 3)
    assert after_images[-2]["role"] == "tool" and "IMG_001" in after_images[-2]["content"]
    shown = after_images[-1]
    assert shown["role"] == "user"
    urls = [p["image_url"]["url"] for p in shown["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    labels = [p["text"] for p in shown["content"] if p["type"] == "text"]
    assert "IMG_001:" in labels and "IMG_002:" in labels

    grounded = state["grounded"]
    assert [r["img_id"] for r in grounded["reference_images"]] == ["IMG_001"]
    # A text-only generator (the tiny SD pipeline) never gets the ordinal phrase.
    assert "reference image" not in grounded["gen_prompt"]
    assert grounded["gen_prompt"].startswith(
        "The drone from an orange quadcopter with folding arms"
    )
    assert grounded["ordinals"][0]["img_id"] == "IMG_001"
    assert state["image"] is not None and state["image"]["image"]["width"] == 64


async def test_text_tool_calls_malformed_calls_and_the_forced_answer_at_the_cap(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    fake_web: WebServer,
    recording: Recorder,
    services_factory: Any,
) -> None:
    """A server without a tool parser (`<tool_call>` text), a malformed text call, a native
    call with broken JSON arguments, then the cap: the model gets no tools and the forced
    final message. A text-only policy sees image titles, never image parts."""
    settings = make_settings(tmp_path, scripted_llm, None, react_max_tool_calls=3)
    scripted_llm.add(
        "text",
        '<think>look it up</think>\n<tool_call>\n{"name": "search", "arguments": '
        '{"queries": ["zephyr specs"]}}\n</tool_call>',
        '<tool_call>{"name": "image_search", "arguments": {"query": }</tool_call>',
        {"tool_calls": [{"name": "browse", "arguments": '{"url": "http://x'}]},
        tool_call("image_search", query="zephyr photo"),
        _answer("an orange drone over a lake", [("IMG_002", "folded drone")]),
    )
    state = await run_graph(services_factory(settings), PROMPT)

    requests = scripted_llm.calls("text")
    assert len(requests) == 5
    # 1: the text call became an OpenAI tool call and got its tool answer.
    second = requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "search"
    assert second[-2]["content"] == "<think>look it up</think>"
    assert second[-1]["role"] == "tool"
    assert second[-1]["tool_call_id"] == second[-2]["tool_calls"][0]["id"]
    # 2: a malformed text call is answered with an error, not a crash.
    error = requests[2]["messages"][-1]
    assert error["role"] == "user"
    assert error["content"].startswith("Tool error: the tool call is not valid JSON")
    # 3: broken JSON arguments of a native call: a tool answer under that call's id.
    bad = requests[3]["messages"]
    assert bad[-1]["role"] == "tool" and bad[-1]["tool_call_id"] == bad[-2]["tool_calls"][0]["id"]
    assert "not JSON" in bad[-1]["content"]
    # 4: a text-only policy gets titles and sources, no image parts.
    images = requests[4]["messages"]
    assert "Zephyr X1 in flight" in images[-2]["content"]
    assert not any(isinstance(m["content"], list) for m in images)
    # The cap (3 calls) is reached: no tools offered, the forced final message last.
    assert "tools" not in requests[4]
    assert images[-1] == {"role": "user", "content": OPENAI.forced_final}
    assert all("tools" in r for r in requests[:4])

    assert state["tool_calls"] == 3
    assert [r["img_id"] for r in state["grounded"]["reference_images"]] == ["IMG_002"]
    assert recording.requests[0].prompt == "an orange drone over a lake"
    assert recording.requests[0].reference_images == [state["image_ids"]["IMG_002"]]


async def test_token_budget_forces_the_answer(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    fake_web: WebServer,
    recording: Recorder,
    services_factory: Any,
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None, react_token_budget=1000)
    big = {"prompt_tokens": 900, "completion_tokens": 200}
    scripted_llm.add(
        "text",
        {
            "tool_calls": [{"name": "search", "arguments": {"queries": ["zephyr specs"]}}],
            "usage": big,
        },  # fmt: skip
        _answer("an orange drone", []),
    )
    state = await run_graph(services_factory(settings), PROMPT)
    requests = scripted_llm.calls("text")
    assert len(requests) == 2 and "tools" not in requests[1]
    assert any("token budget of 1000 spent" in n for n in state["notices"])
    assert state["grounded"]["gen_prompt"] == "an orange drone"


async def test_a_policy_that_never_answers_ends_with_the_prompt(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    recording: Recorder,
    services_factory: Any,
) -> None:
    """Replies that are neither a tool call nor an answer are bounded: cap + 4 LLM calls (the
    last forced), then the prompt as written, with a notice; the run still makes its image."""
    settings = make_settings(tmp_path, scripted_llm, None, react_max_tool_calls=1)
    scripted_llm.add("text", *["I would rather chat."] * 5)
    state = await run_graph(services_factory(settings), PROMPT)
    requests = scripted_llm.calls("text")
    assert len(requests) == 5
    assert "tools" in requests[3] and "tools" not in requests[4]
    assert "That reply could not be used" in requests[1]["messages"][-1]["content"]
    assert state["grounded"]["gen_prompt"] == PROMPT
    assert any("LLM-call budget" in n for n in state["notices"])
    assert state["image"] is not None


async def test_tool_calls_after_the_forced_message_are_refused_not_run(
    tmp_path: Path,
    scripted_llm: ScriptedLLM,
    fake_web: WebServer,
    recording: Recorder,
    services_factory: Any,
) -> None:
    settings = make_settings(tmp_path, scripted_llm, None, react_max_tool_calls=1)
    scripted_llm.add(
        "text",
        tool_call("search", queries=["zephyr specs"]),
        '<tool_call>{"name": "search", "arguments": {"queries": ["more"]}}</tool_call>',
        _answer("an orange drone", []),
    )
    state = await run_graph(services_factory(settings), PROMPT)
    third = sent_messages(scripted_llm, 2)
    # The call stays text (no tool_calls left unanswered); the model is told to answer.
    assert third[-2] == {"role": "assistant", "content": third[-2]["content"]}
    assert third[-1]["role"] == "user" and third[-1]["content"].endswith(OPENAI.forced_final)
    assert "tools" not in scripted_llm.calls("text")[2]
    assert state["tool_calls"] == 1 and len(state["observations"]) == 1
    assert state["grounded"]["gen_prompt"] == "an orange drone"
