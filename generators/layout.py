"""Regional layouts (RPG-style plans): a base prompt plus regions, each with its own prompt.

A single prompt cannot say "a red car on the left, a blue bus on the right" reliably: CLIP
mixes attributes across objects. A layout gives each region its own conditioning; the
diffusers backend blends per-region noise predictions with these regions' masks at every
denoising step (`generators.regional`). This module is pure pydantic (it travels inside a
`GenerationRequest` through the queue as JSON) plus a diagram for the run's dossier.
"""

from __future__ import annotations

from html import escape
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator


def _check_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(
            f"box {box} must be (x0, y0, x1, y1) fractions of the image with "
            "0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
        )
    return box


Box = Annotated[tuple[float, float, float, float], AfterValidator(_check_box)]
"""(x0, y0, x1, y1) as fractions of width and height; (0, 0) is the top-left corner."""


class Region(BaseModel):
    """One region: its own prompt, and a box (or a share of a split, see `RegionalLayout`)."""

    prompt: str = Field(min_length=1, description="What this region shows.")
    box: Box | None = Field(
        default=None, description="(x0, y0, x1, y1) in 0..1; None when the layout has a split."
    )


class RegionalLayout(BaseModel):
    """A base prompt plus 1-8 regions, given as boxes or as a split of the image.

    `split="columns"` with `ratios=[1, 2]` gives the first region the left third and the
    second the rest (rows: top to bottom); ratios default to equal shares. After validation
    every region has its box. `base_ratio` is how much of the base prompt's prediction stays
    inside regions (RPG's base ratio); outside all regions the base prompt alone rules.
    """

    base_prompt: str | None = Field(
        default=None, description="The whole-image prompt; None = the request's prompt."
    )
    regions: list[Region] = Field(min_length=1, max_length=8)
    split: Literal["columns", "rows"] | None = Field(
        default=None, description="Divide the image into len(regions) columns or rows."
    )
    ratios: list[float] | None = Field(
        default=None, description="Relative sizes of the split's parts (default: equal)."
    )
    base_ratio: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _resolve_boxes(self) -> RegionalLayout:
        if self.split is None:
            if self.ratios is not None:
                raise ValueError("ratios need split='columns' or split='rows'")
            missing = [i for i, r in enumerate(self.regions) if r.box is None]
            if missing:
                raise ValueError(
                    f"regions {missing} have no box; give every region a box, or set split"
                )
            return self
        ratios = self.ratios or [1.0] * len(self.regions)
        if len(ratios) != len(self.regions) or any(r <= 0 for r in ratios):
            raise ValueError(
                f"split needs one positive ratio per region ({len(self.regions)}), got {ratios}"
            )
        total = sum(ratios)
        edges = [0.0]
        for r in ratios:
            edges.append(min(1.0, edges[-1] + r / total))
        edges[-1] = 1.0
        boxes = [
            (a, 0.0, b, 1.0) if self.split == "columns" else (0.0, a, 1.0, b)
            for a, b in zip(edges, edges[1:], strict=False)
        ]
        given = [r.box for r in self.regions]
        if any(b is not None for b in given):
            # A layout validated before (e.g. back from the queue's JSON) carries its boxes.
            same = all(
                g is not None and all(abs(x - y) < 1e-6 for x, y in zip(g, b, strict=True))
                for g, b in zip(given, boxes, strict=True)
            )
            if not same:
                raise ValueError("give either boxes or a split, not both")
        for region, box in zip(self.regions, boxes, strict=True):
            region.box = box
        return self

    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [r.box for r in self.regions if r.box is not None]


def pixel_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """A fractional box on a width x height grid: at least one cell, never outside."""
    x0, y0, x1, y1 = box
    c0 = min(width - 1, round(x0 * width))
    r0 = min(height - 1, round(y0 * height))
    return c0, r0, max(c0 + 1, round(x1 * width)), max(r0 + 1, round(y1 * height))


_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def render_layout(
    layout: RegionalLayout,
    *,
    width: int = 512,
    height: int = 512,
    fmt: Literal["svg", "png"] = "svg",
    base_prompt: str | None = None,
) -> bytes:
    """A diagram of the plan for the dossier: the canvas, each region's box and prompt.

    `base_prompt` labels the canvas when the layout has none of its own (the request's prompt).
    """
    base = layout.base_prompt or base_prompt or ""
    if fmt == "svg":
        return _svg(layout, width, height, base)
    return _png(layout, width, height, base)


def _label(i: int, prompt: str, limit: int = 60) -> str:
    text = prompt if len(prompt) <= limit else prompt[: limit - 3] + "..."
    return f"{i + 1}. {text}"


def _svg(layout: RegionalLayout, width: int, height: int, base: str) -> bytes:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24}" '
        f'viewBox="0 0 {width} {height + 24}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f4f4" stroke="#333"/>',
        f'<text x="4" y="{height + 16}" fill="#333">base: {escape(base[:120])}</text>',
    ]
    for i, region in enumerate(layout.regions):
        x0, y0, x1, y1 = pixel_box(region.box or (0, 0, 1, 1), width, height)
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(
            f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="{colour}" '
            f'fill-opacity="0.15" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{x0 + 4}" y="{y0 + 14}" fill="{colour}">'
            f"{escape(_label(i, region.prompt))}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts).encode()


def _png(layout: RegionalLayout, width: int, height: int, base: str) -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height + 24), "#f4f4f4")
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle((0, 0, width - 1, height - 1), outline="#333333")
    draw.text((4, height + 6), f"base: {base[:120]}", fill="#333333")
    for i, region in enumerate(layout.regions):
        x0, y0, x1, y1 = pixel_box(region.box or (0, 0, 1, 1), width, height)
        colour = _COLOURS[i % len(_COLOURS)]
        rgb = tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(*rgb, 40), outline=colour, width=2)
        draw.text((x0 + 4, y0 + 4), _label(i, region.prompt), fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
