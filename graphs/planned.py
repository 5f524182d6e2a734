"""The `planned` policy: a fixed research flow that small local models can follow.

Only wiring lives here; the nodes (agent/nodes.py) decide where to go next through typed
`Command[Literal[...]]` returns, so the edges below are declared by their signatures.
"""

from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent.nodes import PlannedNodes
from agent.services import Services
from agent.settings import RunContext
from agent.state import RunState

NODE_ORDER = (
    "intake",
    "analyze",
    "research",
    "synthesize",
    "refine",
    "generate",
    "critique",
    "finish",
)


def build_planned(
    services: Services, checkpointer: BaseCheckpointSaver | None = None
) -> CompiledStateGraph[RunState, RunContext, RunState, RunState]:
    nodes = PlannedNodes(services)
    builder = StateGraph(RunState, context_schema=RunContext)
    for name in NODE_ORDER:
        builder.add_node(name, getattr(nodes, name))
    builder.add_edge(START, "intake")
    builder.set_finish_point("finish")
    return builder.compile(checkpointer=checkpointer, name="groundwork-planned")
