"""Structured outputs the LLM stages must produce.

Every list is bounded (`max_length`) and categorical fields are enums: small local models
otherwise ramble until `max_tokens` and the JSON is cut (see RECIPES.md). The answer shape of
`GroundedPrompt` follows Gen-Searcher (`gen_prompt` + up to 5 `IMG_###` references) so a model
trained on that format drops in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

GapKind = Literal["entity", "style", "scene", "composition", "text", "count"]


class Gap(BaseModel):
    kind: GapKind = Field(description="What sort of knowledge is missing.")
    span: str = Field(description="The words of the prompt the gap is about.", max_length=200)
    why: str = Field(
        default="", description="Why an image model would get it wrong.", max_length=300
    )
    text_queries: list[str] = Field(
        default_factory=list, max_length=3, description="Web text searches that would fill it."
    )
    image_queries: list[str] = Field(
        default_factory=list, max_length=2, description="Image searches for visual references."
    )
    needs_reference: bool = Field(
        default=False, description="True when the look matters and a reference image helps."
    )

    @field_validator("text_queries", "image_queries", mode="after")
    @classmethod
    def _drop_blank_and_repeated(cls, queries: list[str]) -> list[str]:
        """Small models emit "" or the same query twice; neither is worth a tool call."""
        kept: list[str] = []
        for q in (" ".join(q.split()) for q in queries):
            if q and q.lower() not in {k.lower() for k in kept}:
                kept.append(q)
        return kept


class GapReport(BaseModel):
    """What the prompt names that an image model probably does not know."""

    gaps: list[Gap] = Field(default_factory=list, max_length=6)


class Ref(BaseModel):
    # The pattern is advertised to the model but not enforced here: an id that is malformed or
    # invented is dropped with a notice by the synthesize node, which is better than failing a
    # whole grounded prompt over one bad reference (SmolLM2 does this under json_object).
    img_id: str = Field(
        description="IMG_### id of a researched image.",
        json_schema_extra={"pattern": r"^IMG_\d{3}$"},
    )
    note: str = Field(default="", description="What to take from this image.", max_length=200)


class Fact(BaseModel):
    claim: str = Field(description="A visual fact the image must respect.", max_length=300)
    source_url: str = Field(default="", description="Where the fact was found.")


class GroundedPrompt(BaseModel):
    """A rewritten prompt that spells out what research found, for a text-to-image model."""

    gen_prompt: str = Field(description="The prompt for the image model.", max_length=1500)
    negative_prompt: str = Field(default="", max_length=500)
    reference_images: list[Ref] = Field(default_factory=list, max_length=5)
    facts: list[Fact] = Field(default_factory=list, max_length=8)


class Verdict(BaseModel):
    """A VLM's check of an image against the grounded prompt."""

    match: bool = Field(description="True if the image satisfies the prompt and facts.")
    score: float = Field(ge=0.0, le=1.0, description="0 = unrelated, 1 = perfect.")
    issues: list[str] = Field(default_factory=list, max_length=6)
    edit_instruction: str | None = Field(
        default=None, description="One concrete change that would fix the worst issue."
    )


class Intent(BaseModel):
    """How a chat message relates to the image already on the thread."""

    kind: Literal["new", "refine"] = Field(
        description="new: a different image; refine: change the last image."
    )
    instruction: str = Field(default="", description="For refine: the change, as an edit.")
