"""The `planned` policy: a fixed research flow that small local models can follow.

intake -> analyze -> [clarify -> ask -> analyze] -> research -> synthesize -> generate
        -> [judge] -> critique -> (repair)* -> finish
                \\-- no gaps ------------------------------/

clarify runs only when rules flag a possible ambiguity research cannot settle (chat; off with
`agent.ask_questions`); ask waits for the user's answer with a LangGraph interrupt.
"""

from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import RunContext
from agent.stage import node
from agent.stages.analyze import analyze
from agent.stages.clarify import ask, clarify, router
from agent.stages.research import research
from agent.stages.synthesize import synthesize
from agent.state import RunInput, RunOutput, RunState
from graphs.common import new_builder


def build_planned(
    services: Services, checkpointer: BaseCheckpointSaver | None = None
) -> CompiledStateGraph[RunState, RunContext, RunInput, RunOutput]:
    builder = new_builder(services, first="analyze")
    builder.add_node("analyze", node("analyze", analyze, services))
    builder.add_node("research", node("research", research, services))
    builder.add_node("synthesize", node("synthesize", synthesize, services))
    builder.add_node(
        "clarify",
        node("clarify", clarify, services),
        destinations=("ask", "research", "synthesize"),
    )
    builder.add_node(
        "ask", node("ask", ask, services), destinations=("analyze", "research", "synthesize")
    )
    builder.add_conditional_edges(
        "analyze",
        router(services.settings),
        {"clarify": "clarify", "research": "research", "synthesize": "synthesize"},
    )
    builder.add_edge("research", "synthesize")
    builder.add_edge("synthesize", "generate")
    return builder.compile(checkpointer=checkpointer, name="groundwork-planned")
