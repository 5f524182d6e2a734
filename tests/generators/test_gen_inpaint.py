"""Inpaint from a box: the mask helper, and inpainting on an ordinary 4-channel UNet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from generators.diffusers_backend import DiffusersGenerator
from generators.masks import box_mask, inpaint_request, store_box_mask
from generators.settings import GeneratorSettings

LEFT_HALF = (0.0, 0.0, 0.5, 1.0)


def test_box_mask_is_white_inside() -> None:
    mask = np.asarray(box_mask(8, 4, (0.25, 0.5, 0.75, 1.0)))
    assert mask.shape == (4, 8)
    assert mask[2:, 2:6].min() == 255 and mask[:2].max() == 0 and mask[:, :2].max() == 0
    feathered = np.asarray(box_mask(64, 64, (0.25, 0.25, 0.75, 0.75), feather_px=4))
    assert feathered[16:48, 16:48].min() == 255  # the box itself stays fully repainted
    assert 0 < feathered[14, 32] < 255 and feathered[0, 0] == 0


def test_box_must_be_valid() -> None:
    with pytest.raises(ValidationError):
        box_mask(8, 8, (0.5, 0.5, 0.5, 1.0))


def test_inpaint_request_stores_the_mask(store: ArtifactStore) -> None:
    base = GenerationRequest(prompt="a street", width=96, height=64, seed=3)
    edit = inpaint_request(base, init_image="f" * 64, box=LEFT_HALF, store=store, strength=0.8)
    assert (edit.mode, edit.init_image, edit.strength, edit.seed) == ("inpaint", "f" * 64, 0.8, 3)
    assert edit.mask_image is not None
    with Image.open(store.path(edit.mask_image)) as mask:
        assert mask.mode == "L" and mask.size == (96, 64)
    assert store.meta(edit.mask_image)["box"] == list(LEFT_HALF)
    assert store_box_mask(store, LEFT_HALF, 96, 64).sha256 == edit.mask_image  # same bytes


@pytest.mark.slow
async def test_inpaint_changes_only_the_box_on_a_plain_unet(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """The tiny UNet has 4 input channels (not an inpainting UNet): diffusers' inpaint
    pipeline blends the original latents back outside the mask after every step."""
    g = DiffusersGenerator(tiny_settings, store)
    try:
        base = await g.generate(GenerationRequest(prompt="a street", width=64, height=64, seed=1))
        edits = [
            await g.generate(
                inpaint_request(
                    GenerationRequest(prompt="a red car", width=64, height=64, seed=s, steps=4),
                    init_image=base.image.sha256,
                    box=LEFT_HALF,
                    store=store,
                    strength=1.0,
                )
            )
            for s in (5, 6)
        ]
        caps = await g.capabilities()
        assert g._loaded is not None
        assert g._loaded.modes["inpaint"].unet.config.in_channels == 4
    finally:
        await g.aclose()
    assert caps.inpaint == "latent_blend"
    a, b = (np.asarray(store.open_image(e.image.sha256), dtype=np.int16) for e in edits)
    inside = np.abs(a[:, :24] - b[:, :24]).mean()
    outside = np.abs(a[:, 40:] - b[:, 40:]).mean()  # away from the VAE's reach over the edge
    assert inside > 10 * max(outside, 0.1), (inside, outside)
