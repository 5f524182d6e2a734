"""Graph state: plain JSON-able values only.

Pydantic models (`GapReport`, `Observation`...) are stored as their `model_dump(mode="json")`
dicts and validated again where a stage reads them. That keeps checkpoints portable to any
checkpointer's serializer, and images never enter state: only artifact hashes do.

`typing_extensions.TypedDict` (not `typing`'s) because LangGraph Server derives the graph's JSON
schemas from these on Python 3.11, which needs it.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from typing_extensions import TypedDict

JSON = dict[str, Any]


class StageEvent(TypedDict):
    stage: str
    turn: int
    elapsed_s: float
    summary: str


class CritiqueRound(TypedDict, total=False):
    round: int
    image: JSON  # GenerationResult
    verdict: JSON | None  # Verdict, None when critique was skipped or unusable
    action: Literal["finish", "inpaint", "img2img", "regenerate", "skipped", "edit"]
    detail: str
    judge: JSON | None  # best-of-N: which judge picked this round's image among how many


def add_usage(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Counters summed across stages (LLM calls, tokens), so every stage can add its own."""
    out = dict(left or {})
    for key, value in (right or {}).items():
        out[key] = out.get(key, 0) + value
    return out


class RunInput(TypedDict):
    """What a caller gives a graph: one message (a prompt, or a chat message on a thread)."""

    request: str


class RunOutput(TypedDict, total=False):
    """What a run produces; the run folder and the runner's outcome are made from these keys."""

    request: str
    prompt: str
    turn: int
    gaps: JSON | None
    observations: list[JSON]
    image_ids: dict[str, str]
    grounded: JSON | None
    clarification: JSON | None
    image: JSON | None
    rounds: list[CritiqueRound]
    notices: list[str]
    stages: list[StageEvent]
    usage: dict[str, int]
    error: str | None


class RunState(TypedDict, total=False):
    request: str
    """The latest user message (the prompt for `run`, any chat message for `chat`)."""
    prompt: str
    """The image prompt of the current turn (a refine merges its change into it)."""
    turn: int
    intent: Literal["new", "refine"]
    gaps: JSON | None  # GapReport
    observations: list[JSON]  # Observation
    image_ids: dict[str, str]  # IMG_### -> sha256, stable within the thread
    grounded: JSON | None  # GroundedPrompt
    image: JSON | None  # GenerationResult of the best image so far
    last_image: JSON | None  # GenerationResult of the latest image (what a repair edits)
    image_prompt: str | None
    """The prompt the latest image was made from (a repair's, after fitting): what the critic
    is told."""
    best_score: float | None
    rounds: list[CritiqueRound]
    round: int
    """Images made this turn; bounded by settings.agent.max_rounds."""
    tool_calls: int
    """Tool calls this turn; bounded by the policy's tool budget."""
    repair: JSON | None
    """What the critic asked for: {action, prompt, strength, box}; read by generate."""
    candidates: list[JSON]
    """Best-of-N: this round's GenerationResults, waiting for the judge."""
    judging: JSON | None
    """How the judge picked this round's image (method, seeds, matches); copied into rounds."""
    clarification: JSON | None
    """chat: the clarifying question asked this turn and the user's answer."""
    edit_instruction: str | None
    notices: Annotated[list[str], operator.add]
    """One-line messages for the user (critique skipped, tool unavailable...)."""
    stages: Annotated[list[StageEvent], operator.add]
    """Every node appends one event: the run's timeline for run.json and the dossier."""
    usage: Annotated[dict[str, int], add_usage]
    error: str | None


class ReactInput(TypedDict, total=False):
    """What the react loop (a subgraph, graphs/react.py) reads from the run."""

    prompt: str
    turn: int
    image_ids: dict[str, str]
    observations: list[JSON]
    tool_calls: int


class ReactOutput(TypedDict, total=False):
    """What the react loop gives back to the run: its answer and its research."""

    grounded: JSON | None
    image_ids: dict[str, str]
    observations: list[JSON]
    tool_calls: int
    notices: Annotated[list[str], operator.add]
    stages: Annotated[list[StageEvent], operator.add]
    usage: Annotated[dict[str, int], add_usage]


class ReactState(RunState, total=False):
    """The react loop's own state: the conversation lives here, not in the run's state, and is
    checkpointed in the loop's namespace (a resumed loop continues it)."""

    messages: list[JSON]
    """The policy's conversation (OpenAI-format dicts)."""
    react_seen: list[list[str]]
    """Dedupe keys of the tool calls already run (tools/registry.py `dedupe_key`)."""
    react_next: Literal["tools", "answer", "policy"]
    """What the policy's reply asks for; the loop's route function reads it."""
    react_stop: str | None
    """Why the loop ended without a usable answer (the answer node falls back to the prompt)."""
