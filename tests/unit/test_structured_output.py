"""Structured output through a real OpenAI-compatible HTTP exchange: validation, bounded
repair, and each request method the servers in the wild need."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from agent.contracts import GapReport, GroundedPrompt, Verdict
from agent.llm import (
    LLMError,
    Method,
    StructuredOutputError,
    grammar_safe_schema,
    make_chat_model,
    structured_call,
)
from agent.stages.intake import Intent
from tests.support.scripted_llm import ScriptedLLM

GOOD = {"gaps": [{"kind": "entity", "span": "Zephyr X1", "text_queries": ["Zephyr X1 drone"]}]}


def _chat(server: ScriptedLLM) -> ChatOpenAI:
    return make_chat_model(
        base_url=server.base_url,
        model="scripted-llm",
        api_key="k",
        timeout_s=10,
        max_retries=0,
        temperature=0,
        max_tokens=256,
    )


@pytest.mark.parametrize("method", ["json_schema", "json_object", "function_calling"])
async def test_each_method_round_trips(scripted_llm: ScriptedLLM, method: Method) -> None:
    scripted_llm.add("GapReport", GOOD)
    report = await structured_call(
        _chat(scripted_llm), GapReport, [HumanMessage("p")], method=method, max_repairs=0
    )
    assert report.gaps[0].span == "Zephyr X1"
    body = scripted_llm.requests[0]
    if method == "json_object":
        assert body["response_format"]["type"] == "json_object"
        assert body["response_format"]["schema"]["title"] == "GapReport"


async def test_invalid_answer_is_repaired_with_the_validation_error(
    scripted_llm: ScriptedLLM,
) -> None:
    scripted_llm.add(
        "GapReport",
        {"gaps": [{"kind": "vibes", "span": "x"}]},
        "```json\n" + str(GOOD).replace("'", '"') + "\n```",
    )
    report = await structured_call(
        _chat(scripted_llm), GapReport, [HumanMessage("p")], method="json_schema", max_repairs=2
    )
    assert report.gaps[0].kind == "entity"
    second = scripted_llm.requests[1]["messages"]
    assert "gaps.0.kind" in second[-1]["content"]  # the model was told what was wrong


async def test_repairs_are_bounded(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.add("GapReport", "not json", "still not", "nope", "never asked")
    with pytest.raises(StructuredOutputError, match="after 3 tries"):
        await structured_call(
            _chat(scripted_llm), GapReport, [HumanMessage("p")], method="json_schema", max_repairs=2
        )
    assert len(scripted_llm.requests) == 3


async def test_server_error_is_an_llm_error_not_a_retry_loop(scripted_llm: ScriptedLLM) -> None:
    # nothing scripted: the server answers HTTP 500
    with pytest.raises(LLMError, match="HTTP 500"):
        await structured_call(
            _chat(scripted_llm), GapReport, [HumanMessage("p")], method="json_schema", max_repairs=2
        )


@pytest.mark.parametrize("model", [GapReport, GroundedPrompt, Verdict, Intent])
def test_llama_cpp_grammar_crash_regression_json_object_schema_is_grammar_safe(model: Any) -> None:
    """llama-cpp-python 0.3.36 fails to build a grammar from `pattern`/`maxLength` and its server
    segfaults; json_object requests must not send them (pydantic still enforces them)."""
    sent = json.dumps(grammar_safe_schema(model.model_json_schema()))
    for key in ('"pattern"', '"maxLength"', '"minLength"', '"format"'):
        assert key not in sent
    assert '"maxItems"' in sent or model in (Verdict, Intent)  # lists stay bounded
