"""The one wrapper every stage shares: settings for this run, timing, the stage event, the
stream writer, LLM calls with usage and traces.

A stage is `async def node(run: StageRun) -> Result`. The wrapper turns it into a LangGraph node
`(state, runtime)`: it applies the run's `RunContext` to the settings, times the stage, appends
its `StageEvent` and adds the LLM usage it spent. A stage never names its successor: it writes
data (a repair to make, a question asked, the policy's decision) and the route functions
declared beside the edges in graphs/ choose the next node from it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from langchain_core.messages import BaseMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime
from pydantic import BaseModel

from agent.services import Services
from agent.settings import Role, RunContext, Settings
from agent.state import RunState, StageEvent
from agent.trace import Tracer

T = TypeVar("T", bound=BaseModel)


@dataclass
class Result:
    """What a stage returns: its state update and a one-line summary."""

    update: dict[str, Any]
    summary: str


@dataclass
class StageRun:
    name: str
    state: RunState
    settings: Settings
    services: Services
    runtime: Runtime[RunContext] | None
    tracer: Tracer
    started: float = field(default_factory=time.perf_counter)
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def turn(self) -> int:
        return self.state.get("turn", 1)

    @property
    def tool_budget(self) -> int:
        """Tool calls this run may still make: the one per-run budget (`agent.max_tool_calls`,
        overridable per run by RunContext) that every policy obeys."""
        return max(0, self.settings.agent.max_tool_calls - self.state.get("tool_calls", 0))

    def emit(self, data: dict[str, Any]) -> None:
        """A custom stream event (tool results, progress) for whoever streams the run."""
        if self.runtime is not None:
            self.runtime.stream_writer(data)

    def record_llm(self, role: Role, record: dict[str, Any]) -> None:
        self.usage["llm_calls"] = self.usage.get("llm_calls", 0) + 1
        self.usage["prompt_tokens"] = self.usage.get("prompt_tokens", 0) + record["prompt_tokens"]
        self.usage["completion_tokens"] = (
            self.usage.get("completion_tokens", 0) + record["completion_tokens"]
        )
        self.tracer.write({**record, "role": role})
        self.emit(
            {
                "llm": role,
                "model": record.get("model"),
                "latency_s": record.get("latency_s"),
                "prompt_tokens": record["prompt_tokens"],
                "completion_tokens": record["completion_tokens"],
            }
        )

    def record_tool(self, record: dict[str, Any]) -> None:
        self.usage["tool_calls"] = self.usage.get("tool_calls", 0) + 1
        self.tracer.write({"kind": "tool", **record})

    async def structured(self, role: Role, schema: type[T], messages: list[BaseMessage]) -> T:
        return await self.services.structured(
            role,
            schema,
            messages,
            self.settings,
            observer=lambda record: self.record_llm(role, record),
        )


def _thread_id() -> str:
    try:
        config = get_config()
    except RuntimeError:  # called outside a graph (unit tests of one stage)
        return "no-thread"
    return str((config.get("configurable") or {}).get("thread_id", "no-thread"))


StageFn = Callable[[StageRun], Awaitable[Result]]


class Node(Protocol):
    def __call__(self, state: Any, runtime: Runtime[RunContext]) -> Awaitable[Any]: ...


def node(name: str, fn: StageFn, services: Services) -> Node:
    """Bind a stage function to the run's services as a LangGraph node."""

    # `state: Any`: LangGraph reads a node's input schema from this annotation; unannotated, a
    # node gets its own graph's whole state (the run's, or a subgraph's such as ReactState).
    async def run_stage(state: Any, runtime: Runtime[RunContext]) -> Any:
        ctx = runtime.context
        settings = ctx.apply(services.settings) if ctx is not None else services.settings
        thread_id = _thread_id()
        turn = state.get("turn", 1)
        run = StageRun(
            name=name,
            state=state,
            settings=settings,
            services=services,
            runtime=runtime,
            tracer=services.tracer(thread_id).bind(turn=turn, stage=name),
        )
        result = await fn(run)
        event_turn = result.update.get("turn", turn)
        event = StageEvent(
            stage=name,
            turn=event_turn,
            elapsed_s=round(time.perf_counter() - run.started, 4),
            summary=result.summary,
        )
        update = {**result.update, "stages": [event]}
        if run.usage:
            update["usage"] = run.usage
        return update

    run_stage.__name__ = name
    return run_stage
