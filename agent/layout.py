"""Regional layout plans (RPG's "plan" step): for a prompt with several subjects, synthesis may
give each part of the image its own prompt, so the image model does not mix their attributes.

The plan is a schema the LLM fills (validated, repaired like every structured answer; never
parsed from free text) and becomes the generator's `RegionalLayout`. The grounded prompt stays
the base prompt: a repair that merges an edit into it still reaches the whole image.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from generators.layout import RegionalLayout

LAYOUT_GUIDE = """\
If the image shows several distinct subjects in different places (e.g. "a red car on the left,
a blue bus on the right"), add layout: 2 to {max_regions} regions, each with a short prompt for
what that region shows, placed with split ("columns" left to right, or "rows" top to bottom,
with optional relative ratios) or, when the places are not a simple split, with boxes (x0, y0,
x1, y1 as fractions of the image, (0, 0) top-left). gen_prompt still describes the whole scene.
For a single subject leave layout null."""


class RegionBox(BaseModel):
    x0: float = Field(ge=0.0, le=1.0)
    y0: float = Field(ge=0.0, le=1.0)
    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)


class RegionPlan(BaseModel):
    prompt: str = Field(min_length=1, max_length=300, description="What this region shows.")
    box: RegionBox | None = Field(
        default=None, description="Where the region is; leave null when the layout has a split."
    )


class LayoutPlan(BaseModel):
    """Parts of the image with their own prompts: a split into columns/rows, or boxes."""

    split: Literal["columns", "rows"] | None = Field(
        default=None, description="columns: left to right; rows: top to bottom; null: boxes."
    )
    ratios: list[float] | None = Field(
        default=None, max_length=6, description="Relative sizes of the split's parts."
    )
    regions: list[RegionPlan] = Field(min_length=2, max_length=6)

    @model_validator(mode="after")
    def _valid_for_the_generator(self) -> LayoutPlan:
        # The generator's own rules (boxes inside the image, one ratio per region...) decide,
        # so an invalid plan is a validation error the LLM is asked to repair.
        self.to_regional()
        return self

    def to_regional(self) -> RegionalLayout:
        """The generator's layout; the request's prompt is the base prompt (base_prompt=None)."""
        regions = [
            {
                "prompt": r.prompt,
                "box": None
                if self.split is not None or r.box is None
                else (r.box.x0, r.box.y0, r.box.x1, r.box.y1),
            }
            for r in self.regions
        ]
        return RegionalLayout.model_validate(
            {"regions": regions, "split": self.split, "ratios": self.ratios}
        )


_SPATIAL = re.compile(
    r"\b(left|right|top|bottom|beside|next to|between|behind|in front of|foreground|background|"
    r"above|below|opposite|facing each other)\b",
    re.IGNORECASE,
)
_JOINED = re.compile(r"\b(and|with|while|plus)\b|,", re.IGNORECASE)


def several_subjects(prompt: str, *, joined: bool = True) -> bool:
    """A cheap gate before offering the LLM a layout: positions named, or (when `joined`)
    subjects joined by "and", "with", a comma..."""
    if _SPATIAL.search(prompt):
        return True
    return joined and len(_JOINED.findall(prompt)) >= 1 and len(prompt.split()) >= 6
