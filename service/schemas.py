"""Request and response bodies of the HTTP API (they are the OpenAPI spec at /openapi.json).

The images models follow the OpenAI Images API field for field, so the official `openai`
client parses our answers unchanged; what Groundwork adds (the dossier, the run behind each
image) is in extra fields that clients which do not know them simply ignore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agent.settings import OverrideField, Policy, override_fields


# -- OpenAI Images API --------------------------------------------------------------------------
class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`, as the OpenAI client sends it."""

    model_config = ConfigDict(extra="allow")  # quality, style, user, background...: accepted

    prompt: str = Field(
        min_length=1, description="What to draw; Groundwork researches what it names first."
    )
    model: str | None = Field(
        default=None,
        description='"groundwork-react" runs the react policy; any other value (dall-e-3, '
        "gpt-image-1, ...) the default planned policy.",
    )
    n: int | None = Field(default=1, description="Images to make (one run each).")
    size: str | None = Field(
        default=None, description='"WIDTHxHEIGHT", e.g. "512x512"; "auto" or none = default.'
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default="url", description="url: a signed link valid for an hour; b64_json: inline PNG."
    )
    stream: bool | None = Field(
        default=None, description="Not supported here (400): follow GET /v1/runs/{id}/events."
    )


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = Field(
        default=None, description="The grounded prompt the image was generated from."
    )
    run_id: str | None = Field(default=None, description="Groundwork: the run behind it.")


class GroundworkExtra(BaseModel):
    runs: list[RunView] = Field(description="The runs behind the images, in order.")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png"] = "png"
    size: str | None = None
    dossier: str | None = Field(
        default=None,
        description="Groundwork: the research dossier (Markdown) of the first image's run.",
    )
    groundwork: GroundworkExtra | None = None


# -- runs ---------------------------------------------------------------------------------------
class RunCreateBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="The image prompt.")
    policy: Policy = Field(default="planned", description="planned (default) or react.")


def _override_field(spec: OverrideField) -> tuple[Any, Any]:
    """A request field for one row of the override table: optional, with the constraints
    (ge/le...) of the Settings field it overrides, so a value the settings would refuse is a
    422 at the door rather than a failed run."""
    target = spec.settings_field()
    annotated: Any = Annotated[(spec.type, *target.metadata)] if target.metadata else spec.type
    return annotated | None, Field(default=None, description=spec.help)


def http_override_fields() -> tuple[OverrideField, ...]:
    """The rows of `agent.settings.override_fields()` a request may set (`http=True`)."""
    return tuple(spec for spec in override_fields() if spec.http)


if TYPE_CHECKING:

    class RunCreate(RunCreateBase):
        """`POST /v1/runs`: the prompt, the policy and the per-run overrides."""

else:
    # Generated from the override table (agent.settings.RunContext): adding an override there
    # adds its request field here, with no map to keep in step.
    RunCreate = create_model(
        "RunCreate",
        __base__=RunCreateBase,
        __doc__="`POST /v1/runs`: the prompt, the policy and the per-run overrides.",
        **{spec.name: _override_field(spec) for spec in http_override_fields()},
    )


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(
        min_length=1,
        description="The next chat message on the run's thread (a refinement, a new image, or "
        "the answer to the run's question).",
    )


class ImageView(BaseModel):
    sha256: str
    url: str = Field(description="Signed URL of the image (no token needed; expires).")
    width: int | None = None
    height: int | None = None


class ReferenceView(BaseModel):
    img_id: str
    sha256: str
    url: str
    used: bool = Field(description="Whether the grounded prompt uses it as a reference.")
    note: str | None = None


class StageView(BaseModel):
    stage: str
    turn: int
    elapsed_s: float
    summary: str


class RunView(BaseModel):
    id: str
    object: Literal["groundwork.run"] = "groundwork.run"
    kind: Literal["run", "image"]
    status: Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
    created_at: int
    updated_at: int
    turn: int
    policy: str
    request: str = Field(description="The latest message of the thread (the prompt at first).")
    error: str | None = None
    question: str | None = Field(
        default=None, description="Set when status is interrupted: answer it with a message."
    )
    image: ImageView | None = None
    revised_prompt: str | None = None
    negative_prompt: str | None = None
    references: list[ReferenceView] = Field(default_factory=list)
    facts: list[dict[str, Any]] = Field(default_factory=list)
    gaps: list[dict[str, Any]] = Field(default_factory=list)
    notices: list[str] = Field(default_factory=list)
    stages: list[StageView] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)
    dossier: str | None = Field(default=None, description="The research dossier (Markdown).")
    events_url: str


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunView]


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "groundwork"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class Check(BaseModel):
    ok: bool
    detail: str


class ReadinessView(BaseModel):
    ready: bool
    checks: dict[str, Check]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape, so OpenAI clients raise their usual exceptions."""

    error: ErrorBody


GroundworkExtra.model_rebuild()
