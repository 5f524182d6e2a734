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
    messages: list[JSON]
    """The react policy's conversation (OpenAI-format dicts), so a resumed loop continues."""
    react_seen: list[list[str]]
    """react: (tool, normalised arguments) already called, so a duplicate is refused."""
    edit_instruction: str | None
    notices: Annotated[list[str], operator.add]
    """One-line messages for the user (critique skipped, tool unavailable...)."""
    stages: Annotated[list[StageEvent], operator.add]
    """Every node appends one event: the run's timeline for run.json and the dossier."""
    usage: Annotated[dict[str, int], add_usage]
    error: str | None
