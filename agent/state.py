"""Graph state: plain JSON-able values only.

Pydantic models (`GapReport`, `Observation`...) are stored as their `model_dump(mode="json")`
dicts and validated again where a node reads them. That keeps checkpoints portable to any
checkpointer's serializer (LangGraph warns about, and will block, unregistered classes in
msgpack), and images never enter state: only artifact hashes do.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

JSON = dict[str, Any]


class StageEvent(TypedDict):
    stage: str
    turn: int
    elapsed_s: float
    summary: str


class CritiqueRound(TypedDict):
    round: int
    image: JSON  # GenerationResult
    verdict: JSON | None  # Verdict, None when critique was skipped
    action: Literal["finish", "edit", "skipped"]


class RunState(TypedDict, total=False):
    request: str
    """The latest user message (the prompt for `run`, any chat message for `chat`)."""
    prompt: str
    """The image prompt of the current turn (a refine appends its change to it)."""
    turn: int
    intent: Literal["new", "refine"]
    gaps: JSON | None  # GapReport
    observations: list[JSON]  # Observation
    image_ids: dict[str, str]  # IMG_### -> sha256, stable within the thread
    grounded: JSON | None  # GroundedPrompt
    image: JSON | None  # GenerationResult of the latest image
    rounds: list[CritiqueRound]
    round: int
    """Images made this turn; bounded by settings.agent.max_rounds."""
    tool_calls: int
    """Tool calls this turn; bounded by settings.agent.max_tool_calls."""
    edit_instruction: str | None
    notices: Annotated[list[str], operator.add]
    """One-line messages for the user (critique skipped, tool unavailable...)."""
    stages: Annotated[list[StageEvent], operator.add]
    """Every node appends one event: the run's timeline for run.json and the dossier."""
    error: str | None
