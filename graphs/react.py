"""The `react` policy: a tool-calling loop that a trained search model (Gen-Searcher-8B behind
vLLM) or any tool-calling LLM drives, over the same tools, generator and critic.

    intake -> react[ policy <-> tools (bounded) -> answer ] -> generate -> critique
           -> (repair)* -> finish

The loop is its own compiled subgraph (as open_deep_research's researcher is) with its own
state (`ReactState`: the conversation, the dedupe keys, the policy's decision) and its own
output (`ReactOutput`: the grounded prompt and the research); the run's state never holds the
conversation. The conversation protocol is `settings.agent.react_profile` (agent/profiles.py).
"""

from __future__ import annotations

from typing import Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import RunContext
from agent.stage import node
from agent.stages.react import answer, policy, tools
from agent.state import ReactInput, ReactOutput, ReactState, RunInput, RunOutput, RunState
from graphs.common import PROMPT_READY, new_builder

LoopGraph = CompiledStateGraph[ReactState, RunContext, ReactInput, ReactOutput]


def after_policy(state: ReactState) -> Literal["tools", "answer", "policy"]:
    """What the policy's reply asked for: its tool calls run, its answer (or, when the loop
    is spent, the prompt as written) is taken, or an unusable reply is asked again."""
    return state.get("react_next") or "answer"


def build_loop(services: Services) -> LoopGraph:
    """The tool loop as a subgraph: compiled without a checkpointer, it checkpoints in the
    parent's, in its own namespace (a killed loop resumes mid-conversation)."""
    loop: StateGraph[ReactState, RunContext, ReactInput, ReactOutput] = StateGraph(
        ReactState, context_schema=RunContext, input_schema=ReactInput, output_schema=ReactOutput
    )
    loop.add_node("policy", node("policy", policy, services))
    loop.add_node("tools", node("tools", tools, services))
    loop.add_node("answer", node("answer", answer, services))
    loop.add_edge(START, "policy")
    loop.add_conditional_edges(
        "policy", after_policy, {"tools": "tools", "answer": "answer", "policy": "policy"}
    )
    loop.add_edge("tools", "policy")
    loop.add_edge("answer", END)
    return loop.compile(name="react-loop")


def build_react(
    services: Services,
    checkpointer: BaseCheckpointSaver | None = None,
    *,
    run_folders: bool = False,
) -> CompiledStateGraph[RunState, RunContext, RunInput, RunOutput]:
    builder = new_builder(services, first="react", run_folders=run_folders)
    builder.add_node("react", build_loop(services))
    builder.add_edge("react", PROMPT_READY)
    return builder.compile(checkpointer=checkpointer, name="groundwork-react")
