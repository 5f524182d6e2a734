"""Programmatic entry points.

    settings = Settings()
    async with open_checkpointer(settings) as saver:
        services = Services(settings)
        graph = build_graph(settings, checkpointer=saver, services=services)
        await graph.ainvoke({"request": "..."}, {"configurable": {"thread_id": "t1"}})
        await services.aclose()

`checkpointer=None` compiles without persistence: right for `langgraph dev` / LangGraph
Server, which bring their own, and for one-off calls. The CLI always passes the SQLite saver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import RunContext, Settings
from agent.state import RunState
from graphs.planned import build_planned

Policy = Literal["planned"]


def build_graph(
    settings: Settings | None = None,
    checkpointer: BaseCheckpointSaver | None = None,
    *,
    policy: Policy = "planned",
    services: Services | None = None,
) -> CompiledStateGraph[RunState, RunContext, RunState, RunState]:
    """Compile a policy graph.

    Pass `services` to control their lifetime (`await services.aclose()`); without it the graph
    makes its own, and the embedded LLM server, if one is started, stops when the process exits.
    """
    settings = settings or Settings()
    services = services or Services(settings)
    if policy != "planned":
        raise ValueError(f"unknown policy {policy!r}; available: planned")
    return build_planned(services, checkpointer)


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver]:
    """The default persistence: a SQLite file, so a killed run resumes by its thread id."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = settings.checkpoint_db.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield saver
