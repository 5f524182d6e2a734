"""The `planned` policy: a fixed research flow that small local models can follow.

intake -> analyze -> [clarify -> ask -> analyze] -> research -> synthesize -> generate
        -> [judge] -> critique -> (repair)* -> finish
                \\-- no gaps ------------------------------/

clarify runs only when rules flag a possible ambiguity research cannot settle (chat; off with
`agent.ask_questions`); ask waits for the user's answer with a LangGraph interrupt.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import RunContext, Settings
from agent.stage import node
from agent.stages.analyze import analyze
from agent.stages.clarify import answered, ask, asked_this_turn, clarify, flags, waiting_for_answer
from agent.stages.research import research
from agent.stages.synthesize import synthesize
from agent.state import RunInput, RunOutput, RunState
from graphs.common import PROMPT_READY, new_builder

Researched = Literal["research", "synthesize"]


def to_research(state: RunState) -> Researched:
    """Gaps are researched; a prompt without gaps goes straight to synthesis."""
    gaps = (state.get("gaps") or {}).get("gaps") or []
    return "research" if gaps else "synthesize"


def after_analyze(settings: Settings) -> Callable[[RunState], Literal["clarify"] | Researched]:
    """To clarify when a question may be needed (chat, once a turn), else on to research."""

    def route(state: RunState) -> Literal["clarify"] | Researched:
        if settings.agent.ask_questions and not asked_this_turn(state) and flags(state):
            return "clarify"
        return to_research(state)

    return route


def after_clarify(state: RunState) -> Literal["ask"] | Researched:
    """A question clarify decided to ask waits for its answer; otherwise research goes on."""
    return "ask" if waiting_for_answer(state) else to_research(state)


def after_ask(state: RunState) -> Literal["analyze"] | Researched:
    """An answer joins the prompt and analysis runs again; no answer goes on without it."""
    return "analyze" if answered(state) else to_research(state)


def build_planned(
    services: Services,
    checkpointer: BaseCheckpointSaver | None = None,
    *,
    run_folders: bool = False,
) -> CompiledStateGraph[RunState, RunContext, RunInput, RunOutput]:
    builder = new_builder(services, first="analyze", run_folders=run_folders)
    builder.add_node("analyze", node("analyze", analyze, services))
    builder.add_node("research", node("research", research, services))
    builder.add_node("synthesize", node("synthesize", synthesize, services))
    builder.add_node("clarify", node("clarify", clarify, services))
    builder.add_node("ask", node("ask", ask, services))
    on: dict[Hashable, str] = {"research": "research", "synthesize": "synthesize"}
    builder.add_conditional_edges(
        "analyze", after_analyze(services.settings), {"clarify": "clarify", **on}
    )
    builder.add_conditional_edges("clarify", after_clarify, {"ask": "ask", **on})
    builder.add_conditional_edges("ask", after_ask, {"analyze": "analyze", **on})
    builder.add_edge("research", "synthesize")
    builder.add_edge("synthesize", PROMPT_READY)
    return builder.compile(checkpointer=checkpointer, name="groundwork-planned")
