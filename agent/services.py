"""The long-lived things a graph needs: LLM clients, the generator, the research tools.

They are created lazily (the first node that needs one pays for it) and closed once by
`aclose()`, so building a graph is cheap and `langgraph.json` can import it without loading a
diffusion model or starting a llama.cpp server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, TypeVar

from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from agent.embedded_llm import EmbeddedLLMServer
from agent.errors import GroundworkError
from agent.llm import Method, make_chat_model, structured_call
from agent.settings import Settings, Stage
from generators.artifacts import ArtifactStore

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
        self._embedded_lock = asyncio.Lock()
        self._generator: Generator | None = None
        self._toolkit: Toolkit | None = None

    # -- LLMs ---------------------------------------------------------------------------------
    async def _text_base_url(self, settings: Settings) -> tuple[str, str | None]:
        """(base_url, forced model name): the embedded server serves one model, whatever asked."""
        if settings.llm.base_url:
            return settings.llm.base_url, None
        async with self._embedded_lock:
            if self._embedded is None:
                server = EmbeddedLLMServer(
                    settings.llm.embedded_gguf,
                    n_ctx=settings.llm.embedded_ctx,
                    n_ubatch=settings.llm.embedded_ubatch,
                    timeout_s=settings.llm.embedded_startup_timeout_s,
                )
                await asyncio.to_thread(server.start)
                self._embedded = server
        return self._embedded.base_url, self._embedded.model_name

    def critique_configured(self, settings: Settings) -> str | None:
        """None when critique can run, else the reason it cannot (shown once to the user)."""
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

    async def chat_model(self, stage: Stage, settings: Settings) -> tuple[ChatOpenAI, Method]:
        llm = settings.llm
        if stage == "critique":
            base_url = llm.critique_base_url or llm.base_url
            if not base_url or not llm.critique_model:
                raise GroundworkError(self.critique_configured(settings) or "no critique model")
            model: str = llm.critique_model
            embedded = False
        else:
            base_url, forced = await self._text_base_url(settings)
            model = forced or llm.model_for(stage)
            embedded = forced is not None
        method: Method
        if llm.structured_method == "auto":
            method = "json_object" if embedded else "json_schema"
        else:
            method = llm.structured_method
        chat = make_chat_model(
            base_url=base_url,
            model=model,
            api_key=llm.api_key.get_secret_value(),
            timeout_s=llm.timeout_s,
            max_retries=llm.max_retries,
            temperature=llm.temperature,
            max_tokens=llm.max_tokens,
        )
        return chat, method

    async def structured(
        self, stage: Stage, schema: type[T], messages: list[BaseMessage], settings: Settings
    ) -> T:
        chat, method = await self.chat_model(stage, settings)
        return await structured_call(
            chat, schema, messages, method=method, max_repairs=settings.llm.max_repairs
        )

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
        if self._toolkit is not None:
            await self._toolkit.aclose()
            self._toolkit = None
        if self._generator is not None:
            await self._generator.aclose()
            self._generator = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
