"""The `react` policy: a tool-calling loop that a trained search model (Gen-Searcher-8B behind
vLLM) or any tool-calling LLM drives, over the same tools, generator and critic.

    intake -> policy <-> tools (bounded) -> answer -> generate -> critique -> (repair)* -> finish
                 +-- no usable answer within its LLM-call budget: the prompt as is --> generate

The conversation protocol is `settings.agent.react_profile` (agent/profiles.py).
"""

from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from agent.services import Services
from agent.settings import RunContext
from agent.stage import node
from agent.stages.react import answer, policy, tools
from agent.state import RunInput, RunOutput, RunState
from graphs.common import new_builder


def build_react(
    services: Services, checkpointer: BaseCheckpointSaver | None = None
) -> CompiledStateGraph[RunState, RunContext, RunInput, RunOutput]:
    builder = new_builder(services, first="policy")
    # The tool loop routes itself with Command (open_deep_research style); its targets:
    builder.add_node(
        "policy",
        node("policy", policy, services),
        destinations=("tools", "answer", "policy", "generate"),
    )
    builder.add_node("tools", node("tools", tools, services), destinations=("policy",))
    builder.add_node("answer", node("answer", answer, services))
    builder.add_edge("answer", "generate")
    return builder.compile(checkpointer=checkpointer, name="groundwork-react")
