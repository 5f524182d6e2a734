"""The VLM judge over a real HTTP socket (the scripted OpenAI-compatible server): strict
parsing, bounded re-asks, never a pass from a malformed answer, both orders for preference."""

from __future__ import annotations

import pytest

from evals.config import JudgeConfig
from evals.judge import (
    JudgeError,
    OpenAIJudge,
    both_orders,
    parse_preference,
    parse_yes_no,
)
from tests.support.scripted_llm import ScriptedLLM

PNG = b"\x89PNG\r\n\x1a\nnot-really-a-png"


def test_yes_no_parsing_is_strict() -> None:
    assert parse_yes_no('{"answer": "yes"}', "json_schema") is True
    assert parse_yes_no('```json\n{"answer": "no"}\n```', "json_schema") is False
    for bad in ('{"answer": "Yes!"}', '{"answer": "maybe"}', "yes", "{}", '{"ok": true}'):
        assert parse_yes_no(bad, "json_schema") is None, bad
    assert parse_yes_no("Yes.", "text") is True
    assert parse_yes_no("  no, the cap is blue", "text") is False
    for bad in ("I think yes", "Yesterday", "", "absolutely"):
        assert parse_yes_no(bad, "text") is None, bad


def test_preference_parsing_and_both_orders() -> None:
    assert parse_preference('{"winner": "second"}', "json_schema") == "second"
    assert parse_preference('{"winner": "A"}', "json_schema") is None
    assert parse_preference("First, clearly.", "text") == "first"
    assert parse_preference("both are fine", "text") is None
    assert both_orders("first", "second") == 1  # A wins in both orders
    assert both_orders("second", "first") == -1
    assert both_orders("first", "first") == 0  # flips with the order: position bias, a tie
    assert both_orders("second", "second") == 0
    assert both_orders("tie", "first") == 0
    assert both_orders(None, "first") is None


def _judge(server: ScriptedLLM, **kw: object) -> OpenAIJudge:
    return OpenAIJudge(
        JudgeConfig(base_url=server.base_url, model="scripted-vlm", transport_retries=0, **kw)  # type: ignore[arg-type]
    )


async def test_malformed_answers_are_asked_again_then_reported_unanswered(
    scripted_llm: ScriptedLLM,
) -> None:
    judge = _judge(scripted_llm, max_attempts=3)
    scripted_llm.add("RequirementAnswer", {"answer": "maybe"}, "yes I think", {"answer": "yes"})
    assert await judge.yes_no(PNG, "Is the cap red?", "a red cap") is True
    calls = scripted_llm.calls("RequirementAnswer")
    assert len(calls) == 3
    body = calls[0]
    assert body["model"] == "scripted-vlm"
    assert body["response_format"]["json_schema"]["strict"] is True
    content = body["messages"][-1]["content"]
    assert any(p.get("type") == "image_url" for p in content)
    assert any("Is the cap red?" in p.get("text", "") for p in content)

    scripted_llm.add("RequirementAnswer", "YES", {"answer": "Yes"}, {"answer": "y"})
    assert await judge.yes_no(PNG, "Is the cap red?", "a red cap") is None  # never a pass


async def test_text_mode_and_pairwise_through_the_endpoint(scripted_llm: ScriptedLLM) -> None:
    text_judge = _judge(scripted_llm, method="text")
    scripted_llm.add("text", "No.", "second")
    assert await text_judge.yes_no(PNG, "Is it a panda?", "a panda") is False
    assert await text_judge.prefer(PNG, PNG + b"2", "a panda") == "second"
    schema_judge = _judge(scripted_llm)
    scripted_llm.add("PreferenceAnswer", {"winner": "first"})
    assert await schema_judge.prefer(PNG, PNG + b"2", "a panda") == "first"
    sent = scripted_llm.calls("PreferenceAnswer")[0]["messages"][-1]["content"]
    assert sum(p.get("type") == "image_url" for p in sent) == 2


async def test_an_unreachable_judge_raises_instead_of_answering(scripted_llm: ScriptedLLM) -> None:
    judge = _judge(scripted_llm)  # nothing scripted: the server answers HTTP 500
    with pytest.raises(JudgeError, match="scripted-vlm"):
        await judge.yes_no(PNG, "Is it there?", "x")
    with pytest.raises(JudgeError, match="no VLM judge configured"):
        OpenAIJudge(JudgeConfig())
