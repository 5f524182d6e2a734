"""The long-lived things a graph needs: LLM clients, the generator, the research tools.

They are created lazily (the first stage that needs one pays for it) and closed once by
`aclose()`, so building a graph is cheap and `langgraph.json` can import it without loading a
diffusion model or starting a llama.cpp server. `warm_up()` starts the slow ones (the embedded
LLM server, the in-process pipeline) in the background the moment a run begins, so they load
while intake, analysis and research run; a failure there surfaces in the stage that needs the
component, with the same message it would have had without warm-up.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from agent.embedded_llm import EmbeddedLLMServer
from agent.llm import LLMObserver, Method, make_chat_model, structured_call
from agent.settings import Role, Settings, role_spec
from agent.trace import Tracer
from core.artifacts import ArtifactStore
from core.errors import GroundworkError

if TYPE_CHECKING:
    from generators.base import Generator
    from tools.toolkit import Toolkit

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ArtifactStore.from_settings(settings.artifacts)
        self._embedded: EmbeddedLLMServer | None = None
        self._embedded_starting: EmbeddedLLMServer | None = None
        self._embedded_task: asyncio.Task[EmbeddedLLMServer] | None = None
        self._generator: Generator | None = None
        self._generator_warm: asyncio.Task[Any] | None = None
        self._toolkit: Toolkit | None = None
        self._chats: dict[tuple[Any, ...], ChatOpenAI] = {}

    # -- warm-up ------------------------------------------------------------------------------
    def warm_up(self, settings: Settings | None = None) -> None:
        """Start what is slow to start, in the background; idempotent and never raises here."""
        settings = settings or self.settings
        if settings.llm.uses_embedded():
            self._embedded_start(settings)
        if self._generator_warm is None:
            from generators.base import GeneratorError, Warmable

            try:
                generator = self.generator()
            except GeneratorError as exc:  # the generate stage builds it again and says why
                log.info("generator warm-up skipped: %s", exc)
                return
            # By capability, not by backend name: "diffusers" (an alias) warms up like
            # "inprocess"; a queue client has nothing to load here.
            if isinstance(generator, Warmable):
                self._generator_warm = asyncio.ensure_future(generator.warm())
                self._generator_warm.add_done_callback(_swallow_here)

    # -- LLMs ---------------------------------------------------------------------------------
    def _embedded_start(self, settings: Settings) -> asyncio.Task[EmbeddedLLMServer]:
        """One start of the embedded server per Services; every caller awaits the same task, so
        a failed start is reported (with its own message) by whichever stage needs the LLM."""
        if self._embedded_task is None:
            server = EmbeddedLLMServer(
                settings.llm.embedded_gguf,
                n_ctx=settings.llm.embedded_ctx,
                n_ubatch=settings.llm.embedded_ubatch,
                timeout_s=settings.llm.embedded_startup_timeout_s,
            )

            async def start() -> EmbeddedLLMServer:
                await asyncio.to_thread(server.start)
                self._embedded = server
                return server

            self._embedded_starting = server
            self._embedded_task = asyncio.ensure_future(start())
            self._embedded_task.add_done_callback(_swallow_here)
        return self._embedded_task

    async def _endpoint(self, role: Role, settings: Settings) -> tuple[str, str, str, bool]:
        """(base_url, model, api_key, embedded) for a role (`LLMSettings.endpoint_for`): the
        embedded server serves one model."""
        endpoint = settings.llm.endpoint_for(role)
        if role_spec(role).vision:
            reason = self.critique_configured(settings)
            if reason is not None:
                raise GroundworkError(reason)
        if endpoint.base_url:
            return endpoint.base_url, endpoint.model, endpoint.api_key, False
        try:
            server = await asyncio.shield(self._embedded_start(settings))
        except Exception as exc:  # noqa: BLE001 - re-raised as a copy, nothing swallowed
            # The task keeps its one exception object; raising that object again from every
            # LLM call would add this call's frames to its traceback each time, so a long chat
            # kept every frame (and the run state they hold) alive (issue 21.10's RSS growth).
            raise fresh_copy(exc) from exc.__cause__
        return server.base_url, server.model_name, endpoint.api_key, True

    def critique_configured(self, settings: Settings) -> str | None:
        """None when the vision roles can run, else the reason they cannot (shown once)."""
        llm = settings.llm
        if not llm.critique_model:
            return (
                "critique skipped: no vision model configured "
                "(set GROUNDWORK_LLM__CRITIQUE_MODEL, and GROUNDWORK_LLM__CRITIQUE_BASE_URL if "
                "it is served elsewhere)"
            )
        if not (llm.critique_base_url or llm.base_url):
            return (
                "critique skipped: the embedded LLM has no vision; set "
                "GROUNDWORK_LLM__CRITIQUE_BASE_URL to an OpenAI-compatible VLM endpoint"
            )
        return None

    def judge_method(self, settings: Settings) -> Literal["vlm", "clip"] | None:
        """Who can judge best-of-N candidates: the VLM when one is configured, else CLIP when a
        model is set, else none (generate then makes one image)."""
        if self.critique_configured(settings) is None:
            return "vlm"
        if settings.retrieval.clip_model:
            return "clip"
        return None

    async def chat_model(self, role: Role, settings: Settings) -> tuple[ChatOpenAI, Method]:
        """The chat client for a role, and how structured output is asked of it."""
        llm = settings.llm
        base_url, model, api_key, embedded = await self._endpoint(role, settings)
        method: Method
        if llm.structured_method == "auto":
            method = "json_object" if embedded else "json_schema"
        else:
            method = llm.structured_method
        key = (
            base_url,
            model,
            api_key,
            llm.timeout_s,
            llm.max_retries,
            llm.temperature,
            llm.max_tokens,
        )
        chat = self._chats.get(key)
        if chat is None:
            # One client per endpoint and model: its HTTP connections are reused across calls.
            chat = self._chats[key] = make_chat_model(
                base_url=base_url,
                model=model,
                api_key=key[2],
                timeout_s=llm.timeout_s,
                max_retries=llm.max_retries,
                temperature=llm.temperature,
                max_tokens=llm.max_tokens,
            )
        return chat, method

    def embedded(self, settings: Settings, role: Role = "analyze") -> bool:
        """Whether `role` is served by the embedded llama.cpp server (a weak model)."""
        return settings.llm.endpoint_for(role).base_url is None

    async def structured(
        self,
        role: Role,
        schema: type[T],
        messages: list[BaseMessage],
        settings: Settings,
        *,
        observer: LLMObserver | None = None,
    ) -> T:
        chat, method = await self.chat_model(role, settings)
        return await structured_call(
            chat,
            schema,
            messages,
            method=method,
            max_repairs=settings.llm.max_repairs,
            observer=observer,
        )

    def tracer(self, thread_id: str) -> Tracer:
        return Tracer(self.trace_path(thread_id), thread_id=thread_id)

    def trace_path(self, thread_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in thread_id)[:120]
        return self.settings.traces_dir.expanduser() / f"{safe or 'thread'}.jsonl"

    # -- generator and tools ------------------------------------------------------------------
    def generator(self) -> Generator:
        if self._generator is None:
            from generators.factory import make_generator

            s = self.settings
            self._generator = make_generator(s.generator, s.queue, self.store)
        return self._generator

    def toolkit(self) -> Toolkit:
        if self._toolkit is None:
            from tools.toolkit import Toolkit

            s = self.settings
            self._toolkit = Toolkit(s.tools, self.store, retrieval=s.retrieval)
        return self._toolkit

    async def aclose(self) -> None:
        """Close everything; the embedded LLM server first, since it is a process of its own
        and the other closes may wait on a worker thread (a model still loading)."""
        if self._embedded_task is not None and not self._embedded_task.done():
            # The start runs in a thread that cannot be cancelled, but `stop()` ends its wait
            # for readiness at once (issue 21.10: Ctrl-C waited for the server to come up, then
            # for it to go down): stop it, then let the thread see it and finish.
            if self._embedded_starting is not None:
                await asyncio.to_thread(self._embedded_starting.stop)
            await asyncio.wait([self._embedded_task])
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None
        self._embedded_task = None
        self._embedded_starting = None
        if self._toolkit is not None:
            await self._toolkit.aclose()
            self._toolkit = None
        if self._generator_warm is not None and not self._generator_warm.done():
            self._generator_warm.cancel()
        if self._generator is not None:
            await self._generator.aclose()
            self._generator = None


def fresh_copy(exc: BaseException) -> BaseException:
    """The same error (type, message, attributes) without the traceback of earlier raises: a
    cached exception must be raised as a copy, or each raise grows the cached one's
    traceback and keeps the raising frames alive."""
    try:
        clone = copy.copy(exc)
    except (TypeError, ValueError):  # a constructor copy cannot call: the message survives
        return GroundworkError(str(exc))
    clone.__traceback__ = None
    return clone


def _swallow_here(task: asyncio.Future[Any]) -> None:
    """A warm-up failure is re-raised where the component is needed; mark it retrieved here."""
    if not task.cancelled() and task.exception() is not None:
        log.info("warm-up failed (reported by the stage that needs it): %s", task.exception())
