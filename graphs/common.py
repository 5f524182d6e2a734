"""What every policy shares: intake at the start, and generate -> [judge] -> critique ->
(repair)* -> finish at the end. A policy file declares only its own research edges between the
two, ending at `PROMPT_READY`. The judge runs only when generate made several candidates
(best-of-N).

Stages never name their successors: each route function here (and in the policy files) reads
what a stage wrote to state and picks the next node, beside the edges it serves. A stage that
must run on every path once a grounded prompt exists (a safety check, say) is one node here,
with `PROMPT_READY` pointed at it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent.services import Services
from agent.settings import RunContext
from agent.stage import Node, node
from agent.stages.critique import critique
from agent.stages.finish import finish
from agent.stages.generate import generate
from agent.stages.intake import intake
from agent.stages.judge import judge
from agent.stages.refine import refine
from agent.state import RunInput, RunOutput, RunState

Builder = StateGraph[RunState, RunContext, RunInput, RunOutput]

PROMPT_READY = "generate"
"""Where every path goes once the turn has its grounded prompt (synthesize, refine, the react
loop's answer). The repair loop goes back to generate itself."""


def after_intake(state: RunState) -> Literal["refine", "start"]:
    """A refine goes to `refine`; a new image to the policy's own first research stage."""
    return "refine" if state.get("intent") == "refine" else "start"


def after_generate(state: RunState) -> Literal["judge", "critique"]:
    """Several candidates go to the judge first."""
    return "judge" if len(state.get("candidates") or []) > 1 else "critique"


def after_critique(state: RunState) -> Literal["generate", "finish"]:
    """A repair the critic asked for goes back to generate; none (all pass, budget spent, no
    improvement, no critic) finishes."""
    return "generate" if state.get("repair") else "finish"


def with_run_folder(finish_node: Node, services: Services) -> Node:
    """finish, then the turn's run folder: for servers that run the graph without the Runner
    (LangGraph Server, `langgraph dev`), which otherwise leave no run folder. A folder that
    cannot be written is a notice; the run itself is done."""
    from graphs.run_folder import RunFolderError, write_turn

    async def finish_and_write(state: Any, runtime: Runtime[RunContext]) -> Any:
        update = await finish_node(state, runtime)
        values = {**state, **update, "stages": [*state.get("stages", []), *update["stages"]]}
        output = {key: values.get(key) for key in RunOutput.__annotations__}
        settings = (
            runtime.context.apply(services.settings) if runtime.context else services.settings
        )
        thread_id = str((get_config().get("configurable") or {}).get("thread_id", "no-thread"))
        try:
            await asyncio.to_thread(write_turn, services, thread_id, values, output, settings)
        except RunFolderError as exc:
            return {**update, "notices": [str(exc)]}
        return update

    return finish_and_write


def new_builder(services: Services, *, first: str, run_folders: bool = False) -> Builder:
    """intake, refine and the shared tail, wired; the policy adds `first` and its research.
    `run_folders`: finish writes the turn's run folder (graphs run without the Runner)."""
    builder: Builder = StateGraph(
        RunState, context_schema=RunContext, input_schema=RunInput, output_schema=RunOutput
    )
    builder.add_node("intake", node("intake", intake, services))
    builder.add_node("refine", node("refine", refine, services))
    builder.add_node("generate", node("generate", generate, services))
    builder.add_node("judge", node("judge", judge, services))
    builder.add_node("critique", node("critique", critique, services))
    finish_node = node("finish", finish, services)
    if run_folders:
        finish_node = with_run_folder(finish_node, services)
    builder.add_node("finish", finish_node)
    builder.add_edge(START, "intake")
    builder.add_conditional_edges("intake", after_intake, {"refine": "refine", "start": first})
    builder.add_edge("refine", PROMPT_READY)
    builder.add_conditional_edges(
        "generate", after_generate, {"judge": "judge", "critique": "critique"}
    )
    builder.add_edge("judge", "critique")
    builder.add_conditional_edges(
        "critique", after_critique, {"generate": "generate", "finish": "finish"}
    )
    builder.add_edge("finish", END)
    return builder
