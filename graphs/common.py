"""What every policy shares: intake at the start, and generate -> [judge] -> critique ->
(repair)* -> finish at the end. A policy file declares only its own research edges between the
two. The judge runs only when generate made several candidates (best-of-N)."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from agent.services import Services
from agent.settings import RunContext
from agent.stage import node
from agent.stages.critique import critique
from agent.stages.finish import finish
from agent.stages.generate import generate
from agent.stages.intake import intake
from agent.stages.intake import route as intake_route
from agent.stages.judge import judge
from agent.stages.judge import route as judge_route
from agent.stages.refine import refine
from agent.state import RunInput, RunOutput, RunState

Builder = StateGraph[RunState, RunContext, RunInput, RunOutput]


def new_builder(services: Services, *, first: str) -> Builder:
    """intake, refine and the shared tail, wired; the policy adds `first` and its research."""
    builder: Builder = StateGraph(
        RunState, context_schema=RunContext, input_schema=RunInput, output_schema=RunOutput
    )
    builder.add_node("intake", node("intake", intake, services))
    builder.add_node("refine", node("refine", refine, services))
    # generate and critique loop with Command (the repair loop); their targets are declared here.
    builder.add_node("generate", node("generate", generate, services))
    builder.add_node("judge", node("judge", judge, services))
    builder.add_node(
        "critique", node("critique", critique, services), destinations=("generate", "finish")
    )
    builder.add_node("finish", node("finish", finish, services))
    builder.add_edge(START, "intake")
    builder.add_conditional_edges("intake", intake_route, {"refine": "refine", "start": first})
    builder.add_edge("refine", "generate")
    builder.add_conditional_edges(
        "generate", judge_route, {"judge": "judge", "critique": "critique"}
    )
    builder.add_edge("judge", "critique")
    builder.add_edge("finish", END)
    return builder
