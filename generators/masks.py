"""Inpaint masks from boxes: when a critique confines a failure to a region, repaint only it.

The mask is an "L" PNG the size of the request (white = repaint, black = keep), stored in the
artifact store like every image, so an inpaint request carries only its hash through state and
queues. With a 9-channel inpainting UNet the pipeline inpaints natively; with an ordinary
4-channel UNet (sd-turbo, most checkpoints) diffusers' inpaint pipeline denoises the masked
latents and puts the re-noised original back outside the mask after every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.artifacts import ArtifactRef, ArtifactStore
from generators.base import GenerationRequest
from generators.layout import pixel_box

if TYPE_CHECKING:
    from PIL import Image


def box_mask(
    width: int,
    height: int,
    box: tuple[float, float, float, float],
    *,
    feather_px: int = 0,
) -> Image.Image:
    """A width x height "L" mask, 255 inside `box` (fractions x0, y0, x1, y1), 0 outside.

    `feather_px` blurs the edge so the repainted patch blends in; the box interior stays 255.
    """
    from PIL import Image, ImageDraw, ImageFilter

    from generators.layout import Region

    Region(prompt="mask", box=box)  # validates the box with the layout's rules
    mask = Image.new("L", (width, height), 0)
    x0, y0, x1, y1 = pixel_box(box, width, height)
    draw = ImageDraw.Draw(mask)
    draw.rectangle(
        (x0 - feather_px, y0 - feather_px, x1 - 1 + feather_px, y1 - 1 + feather_px), 255
    )
    if feather_px > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(feather_px / 2))
        draw = ImageDraw.Draw(mask)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), 255)
    return mask


def store_box_mask(
    store: ArtifactStore,
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    *,
    feather_px: int = 0,
) -> ArtifactRef:
    """`box_mask` stored in the artifact store; the ref's sha256 goes in `mask_image`."""
    return store.put_image(
        box_mask(width, height, box, feather_px=feather_px),
        {"kind": "inpaint_mask", "box": list(box), "feather_px": feather_px},
    )


def inpaint_request(
    request: GenerationRequest,
    *,
    init_image: str,
    box: tuple[float, float, float, float],
    store: ArtifactStore,
    strength: float | None = None,
    feather_px: int = 0,
) -> GenerationRequest:
    """`request` turned into an inpaint of `init_image` (sha256) inside `box`, mask stored.

    The prompt, seed and size stay the request's; `strength` (None = keep the request's) is
    how far the masked area may move from the original.
    """
    mask = store_box_mask(store, box, request.width, request.height, feather_px=feather_px)
    update: dict[str, object] = {
        "mode": "inpaint",
        "init_image": init_image,
        "mask_image": mask.sha256,
    }
    if strength is not None:
        update["strength"] = strength
    return request.model_copy(update=update)
