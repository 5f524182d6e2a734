"""One LLM path: any OpenAI-compatible endpoint, structured output validated by pydantic.

Servers differ in what structured output they accept (OpenAI and vLLM: `json_schema`; the
llama.cpp server: `json_object` with a `schema`, its `json_schema` mode answers HTTP 500; some
only do tool calling). Whatever the method, the answer is validated here and an invalid one is
sent back once or twice with the validation error (`max_repairs`), then the stage fails loudly.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import openai
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ValidationError

from core.errors import GroundworkError

T = TypeVar("T", bound=BaseModel)
Method = Literal["json_schema", "json_object", "function_calling"]

log = logging.getLogger(__name__)


class LLMError(GroundworkError):
    """The LLM endpoint failed in a way the user must fix (unreachable, unknown model...)."""


class StructuredOutputError(LLMError):
    """The model kept answering with JSON that does not match the schema."""


def make_chat_model(
    *,
    base_url: str,
    model: str,
    api_key: str,
    timeout_s: float,
    max_retries: int,
    temperature: float,
    max_tokens: int,
) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=base_url,
        model=model,
        api_key=api_key,  # type: ignore[arg-type]
        timeout=timeout_s,
        max_retries=max_retries,
        temperature=temperature,
        max_completion_tokens=max_tokens,
    )


# llama.cpp's JSON-schema-to-grammar converter fails on these ("failed to parse grammar") and
# llama-cpp-python 0.3.36's server then segfaults. pydantic still enforces them on the answer.
_GRAMMAR_UNSAFE = frozenset({"pattern", "maxLength", "minLength", "format"})


def grammar_safe_schema(node: Any) -> Any:
    """The schema without string constraints that break llama.cpp grammars (lists stay bounded)."""
    if isinstance(node, dict):
        return {k: grammar_safe_schema(v) for k, v in node.items() if k not in _GRAMMAR_UNSAFE}
    if isinstance(node, list):
        return [grammar_safe_schema(v) for v in node]
    return node


def _response_format(schema: type[BaseModel], method: Method) -> dict[str, Any]:
    # A copy of the cached schema: building one takes pydantic milliseconds on every LLM call.
    return copy.deepcopy(_cached_response_format(schema, method))


@functools.lru_cache(maxsize=256)
def _cached_response_format(schema: type[BaseModel], method: Method) -> dict[str, Any]:
    json_schema = schema.model_json_schema()
    if method == "json_object":
        return {"type": "json_object", "schema": grammar_safe_schema(json_schema)}
    return {
        "type": "json_schema",
        "json_schema": {"name": schema.__name__, "schema": json_schema, "strict": False},
    }


def _extract_json(text: str) -> str:
    """Models sometimes wrap JSON in ``` fences or prose; take the outermost object."""
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end < start:
        return text
    return text[start : end + 1]


LLMObserver = Callable[[dict[str, Any]], None]
"""Receives one record per LLM call: messages in, tools offered, answer, tokens, latency."""


async def structured_call(
    llm: ChatOpenAI,
    schema: type[T],
    messages: list[BaseMessage],
    *,
    method: Method,
    max_repairs: int,
    observer: LLMObserver | None = None,
) -> T:
    """Ask for a `schema` instance; re-ask with the validation error at most `max_repairs` times."""
    if method == "function_calling":
        runnable: Any = llm.bind_tools([schema], tool_choice=schema.__name__)
    else:
        runnable = llm.bind(response_format=_response_format(schema, method))
    convo = list(messages)
    last_error = ""
    for attempt in range(max_repairs + 1):
        started = time.perf_counter()
        reply = await invoke(runnable, convo, llm)
        raw = _raw_answer(reply)
        if observer is not None:
            observer(
                call_record(llm, convo, reply, started, response_format=schema.__name__, tools=None)
            )
        try:
            return schema.model_validate_json(_extract_json(raw))
        except ValidationError as exc:
            last_error = _short_validation_error(exc)
        log.info("structured output attempt %d invalid: %s", attempt + 1, last_error)
        convo += [
            AIMessage(content=raw),
            HumanMessage(
                content=f"That answer is invalid: {last_error}. Reply again with only a JSON "
                f"object that matches the {schema.__name__} schema."
            ),
        ]
    raise StructuredOutputError(
        f"{llm.model_name} gave no valid {schema.__name__} after {max_repairs + 1} tries "
        f"(last error: {last_error}); try a stronger model or another GROUNDWORK_LLM__"
        "STRUCTURED_METHOD"
    )


def _raw_answer(reply: BaseMessage) -> str:
    if isinstance(reply, AIMessage) and reply.tool_calls:
        return json.dumps(reply.tool_calls[0]["args"])
    content = reply.content
    if isinstance(content, list):
        return "".join(c if isinstance(c, str) else str(c.get("text", "")) for c in content)
    return str(content)


def _short_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def invoke(runnable: Any, messages: list[BaseMessage], llm: ChatOpenAI) -> BaseMessage:
    """Turn transport failures into errors that say which endpoint and what to do."""
    where = f"{llm.openai_api_base} (model {llm.model_name})"
    try:
        reply: BaseMessage = await runnable.ainvoke(messages)
        return reply
    except openai.APIConnectionError as exc:
        raise LLMError(
            f"cannot reach the LLM endpoint {where}: {exc}; check GROUNDWORK_LLM__BASE_URL "
            "or leave it unset to use the embedded model"
        ) from exc
    except openai.NotFoundError as exc:
        raise LLMError(f"the LLM endpoint {where} does not know this model: {exc}") from exc
    except openai.AuthenticationError as exc:
        raise LLMError(f"the LLM endpoint {where} refused the API key: {exc}") from exc
    except openai.APIStatusError as exc:
        raise LLMError(f"the LLM endpoint {where} answered HTTP {exc.status_code}: {exc}") from exc
    except openai.LengthFinishReasonError as exc:
        # A reply cut at max_tokens is no answer: callers degrade as for any failed call.
        raise LLMError(
            f"the reply of {where} was cut at its length limit ({llm.max_tokens} tokens); raise "
            "GROUNDWORK_LLM__MAX_TOKENS or use a model that answers more briefly"
        ) from exc


def image_data_url(png_bytes: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(png_bytes).decode()}"


def call_record(
    llm: ChatOpenAI,
    messages: list[BaseMessage],
    reply: BaseMessage,
    started: float,
    *,
    response_format: str | None,
    tools: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """One LLM call as a JSON-able trace record (the shape `traces export` reads)."""
    usage = getattr(reply, "usage_metadata", None) or {}
    return {
        "kind": "llm",
        "model": llm.model_name,
        "messages": [message_to_dict(m) for m in messages],
        "tools": tools,
        "response_format": response_format,
        "answer": message_to_dict(reply),
        "prompt_tokens": int(usage.get("input_tokens", 0)),
        "completion_tokens": int(usage.get("output_tokens", 0)),
        "latency_s": round(time.perf_counter() - started, 4),
    }


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message in OpenAI chat format (what SFT data and vLLM expect)."""
    role = {
        SystemMessage: "system",
        HumanMessage: "user",
        AIMessage: "assistant",
        ToolMessage: "tool",
    }.get(type(message), getattr(message, "type", "user"))
    out: dict[str, Any] = {"role": role, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc.get("id") or f"call_{i}",
                "type": "function",
                "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])},
            }
            for i, tc in enumerate(message.tool_calls)
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out
