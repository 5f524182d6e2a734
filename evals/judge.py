"""The VLM judge: one yes/no question per requirement, and pairwise preference.

A judge's answer counts only when it parses strictly: `{"answer": "yes"|"no"}` (or, in text
mode, a reply whose first word is yes or no). Anything else is asked again, a bounded number of
times, and then reported as unanswered: a malformed answer is never read as a pass.
Pairwise preference is asked in both orders; a judge that changes its mind when the images
swap places has shown position bias, and that comparison is a tie.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, cast

import openai
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError

from agent.llm import image_data_url, make_chat_model
from core.errors import GroundworkError
from evals.config import JudgeConfig

Preference = Literal["first", "second", "tie"]
T = TypeVar("T")


class JudgeError(GroundworkError):
    """The judge endpoint failed (unreachable, HTTP error); the message says which."""


class RequirementAnswer(BaseModel):
    answer: Literal["yes", "no"]


class PreferenceAnswer(BaseModel):
    winner: Literal["first", "second", "tie"]


class Judge(Protocol):
    name: str

    async def yes_no(self, image_png: bytes, question: str, prompt: str) -> bool | None:
        """True/False, or None when no valid answer came within the attempts."""
        ...

    async def prefer(
        self, first_png: bytes, second_png: bytes, prompt: str
    ) -> Preference | None: ...


YES_NO_SYSTEM = (
    "You check generated images. Look only at the image. Answer the question about it with "
    "yes or no. Say yes only when the image clearly shows it."
)
YES_NO_USER = 'The image was generated for the prompt: "{prompt}".\nQuestion: {question}'
YES_NO_JSON = '\nReply with only a JSON object: {"answer": "yes"} or {"answer": "no"}.'
YES_NO_TEXT = "\nReply with one word: yes or no."

PREFER_SYSTEM = (
    "You compare two generated images for the same prompt. Judge which image shows what the "
    "prompt asks for more faithfully: the named things with their correct look, counts, "
    "colours, relations and text. Ignore which image comes first."
)
PREFER_USER = 'Prompt: "{prompt}".\nThe first image is shown first, the second image second.'
PREFER_JSON = '\nReply with only a JSON object: {"winner": "first" | "second" | "tie"}.'
PREFER_TEXT = "\nReply with one word: first, second or tie."

_FIRST_WORD = re.compile(r"^\W*([a-z]+)\b", re.IGNORECASE)


def parse_yes_no(text: str, method: Literal["json_schema", "text"]) -> bool | None:
    """Strict: only a well-formed answer counts; everything else is None (ask again)."""
    if method == "json_schema":
        start, end = text.find("{"), text.rfind("}")
        if start == -1 or end < start:
            return None
        try:
            return RequirementAnswer.model_validate_json(text[start : end + 1]).answer == "yes"
        except ValidationError:
            return None
    m = _FIRST_WORD.match(text.strip())
    if not m or m.group(1).lower() not in ("yes", "no"):
        return None
    return m.group(1).lower() == "yes"


def parse_preference(text: str, method: Literal["json_schema", "text"]) -> Preference | None:
    if method == "json_schema":
        start, end = text.find("{"), text.rfind("}")
        if start == -1 or end < start:
            return None
        try:
            return PreferenceAnswer.model_validate_json(text[start : end + 1]).winner
        except ValidationError:
            return None
    m = _FIRST_WORD.match(text.strip())
    word = m.group(1).lower() if m else ""
    if word == "first":
        return "first"
    if word == "second":
        return "second"
    if word == "tie":
        return "tie"
    return None


def both_orders(ab: Preference | None, ba: Preference | None) -> int | None:
    """+1: A preferred in both orders; -1: B in both; 0: a tie or a flip with the order
    (position bias); None: an order went unanswered."""
    if ab is None or ba is None:
        return None
    if ab == "first" and ba == "second":
        return 1
    if ab == "second" and ba == "first":
        return -1
    return 0


def _schema_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": model.__name__,
            "schema": model.model_json_schema(),
            "strict": True,
        },
    }


class OpenAIJudge:
    """Any OpenAI-compatible VLM endpoint (vLLM, OpenAI, Ollama with a vision model)."""

    def __init__(self, config: JudgeConfig) -> None:
        if config.configured() is not None or not config.base_url or not config.model:
            raise JudgeError(config.configured() or "judge not configured")
        self.config = config
        self.name = f"{config.model} @ {config.base_url}"
        self.chat = make_chat_model(
            base_url=config.base_url,
            model=config.model,
            api_key=config.api_key(),
            timeout_s=config.timeout_s,
            max_retries=config.transport_retries,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        )

    async def _ask(
        self, messages: list[BaseMessage], schema: type[BaseModel], parse: Any
    ) -> tuple[Any, list[str]]:
        runnable: Any = (
            self.chat.bind(response_format=_schema_format(schema))
            if self.config.method == "json_schema"
            else self.chat
        )
        raw_answers: list[str] = []
        for _ in range(self.config.max_attempts):
            try:
                reply = await runnable.ainvoke(messages)
            except openai.APIError as exc:
                raise JudgeError(f"judge {self.name} failed: {exc}") from exc
            text = reply.content if isinstance(reply, AIMessage) else str(reply)
            if isinstance(text, list):
                text = "".join(c if isinstance(c, str) else str(c.get("text", "")) for c in text)
            raw_answers.append(str(text)[:200])
            value = parse(str(text), self.config.method)
            if value is not None:
                return value, raw_answers
        return None, raw_answers

    async def yes_no(self, image_png: bytes, question: str, prompt: str) -> bool | None:
        tail = YES_NO_JSON if self.config.method == "json_schema" else YES_NO_TEXT
        messages: list[BaseMessage] = [
            SystemMessage(YES_NO_SYSTEM),
            HumanMessage(
                content=[
                    {"type": "image_url", "image_url": {"url": image_data_url(image_png)}},
                    {
                        "type": "text",
                        "text": YES_NO_USER.format(prompt=prompt, question=question) + tail,
                    },
                ]
            ),
        ]
        value, _ = await self._ask(messages, RequirementAnswer, parse_yes_no)
        return None if value is None else bool(value)

    async def ask(
        self,
        images: list[bytes],
        system: str,
        text: str,
        parse: Callable[[str], T | None],
        *,
        max_tokens: int | None = None,
    ) -> T | None:
        """A benchmark's own judge instruction (WISE, KnowGen): the text first, then the images
        in order; the reply is parsed by `parse` and asked again while it does not parse."""
        content: list[str | dict[str, Any]] = [{"type": "text", "text": text}]
        content += [
            {"type": "image_url", "image_url": {"url": image_data_url(png)}} for png in images
        ]
        messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(content=content)]
        runnable: Any = self.chat.bind(max_tokens=max_tokens) if max_tokens else self.chat
        for _ in range(self.config.max_attempts):
            try:
                reply = await runnable.ainvoke(messages)
            except openai.APIError as exc:
                raise JudgeError(f"judge {self.name} failed: {exc}") from exc
            raw = reply.content
            if isinstance(raw, list):
                raw = "".join(c if isinstance(c, str) else str(c.get("text", "")) for c in raw)
            value = parse(str(raw))
            if value is not None:
                return value
        return None

    async def prefer(self, first_png: bytes, second_png: bytes, prompt: str) -> Preference | None:
        tail = PREFER_JSON if self.config.method == "json_schema" else PREFER_TEXT
        messages: list[BaseMessage] = [
            SystemMessage(PREFER_SYSTEM),
            HumanMessage(
                content=[
                    {"type": "text", "text": "First image:"},
                    {"type": "image_url", "image_url": {"url": image_data_url(first_png)}},
                    {"type": "text", "text": "Second image:"},
                    {"type": "image_url", "image_url": {"url": image_data_url(second_png)}},
                    {"type": "text", "text": PREFER_USER.format(prompt=prompt) + tail},
                ]
            ),
        ]
        value, _ = await self._ask(messages, PreferenceAnswer, parse_preference)
        return cast(Preference | None, value)
