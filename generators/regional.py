"""Regional conditioning for UNet pipelines (SD 1.x, SD 2.x, SDXL): one denoiser, many prompts.

At every denoising step the UNet runs once on a batch that holds the pipeline's own rows (the
base prompt, and the unconditional rows under CFG) plus, for each region, a copy of the
conditional rows with that region's text embeddings (SDXL: also its pooled embedding; the
size/crop time ids are the base rows'). The noise predictions are then blended with the
regions' masks on the latent grid:

    eps = base * (1 - (1 - b) * coverage) + (1 - b) * sum_i mask_i * eps_i

with b the layout's `base_ratio` and masks normalised where regions overlap, so outside every
region the base prompt alone decides. This is latent-couple / MultiDiffusion-style blending of
noise predictions, the "regional" half of RPG; the pipeline code itself is untouched: the
UNet's `forward` is swapped for the duration of one call (the generator's lock makes that safe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from generators.base import GeneratorError
from generators.layout import RegionalLayout, pixel_box

if TYPE_CHECKING:
    import torch


def region_masks(
    boxes: list[tuple[float, float, float, float]],
    height: int,
    width: int,
    *,
    device: Any = "cpu",
    dtype: Any = None,
) -> torch.Tensor:
    """(R, 1, height, width) masks of the boxes on a grid; where boxes overlap they share
    the cell so that each cell's masks sum to at most 1."""
    import torch

    masks = torch.zeros(len(boxes), 1, height, width, device=device, dtype=dtype or torch.float32)
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = pixel_box(box, width, height)
        masks[i, :, y0:y1, x0:x1] = 1.0
    total = masks.sum(0, keepdim=True)
    return torch.where(total > 1, masks / total.clamp(min=1), masks)


def encode_regions(pipe: Any, prompts: list[str], device: Any) -> tuple[Any, Any | None]:
    """Text embeddings (R, seq, dim) of the region prompts, and SDXL's pooled (R, dim)."""
    if getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "tokenizer_2"):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds, pooled
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return embeds, None


class RegionalDenoiser:
    """Stands in for `unet.forward` during one pipeline call; see the module docstring.

    `masks` holds the last (R, 1, h, w) latent masks used and `steps` the UNet calls made, so
    tests and logs can see what the regions did.
    """

    def __init__(
        self,
        pipe: Any,
        layout: RegionalLayout,
        embeds: Any,
        pooled: Any | None,
        inner: Callable[..., Any],
    ) -> None:
        self.pipe = pipe
        self.layout = layout
        self.embeds = embeds
        self.pooled = pooled
        self.inner = inner
        self.masks: Any = None
        self.steps = 0

    def forward(self, sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        n = int(sample.shape[0])
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and n % 2 == 0
        start = n // 2 if cfg else 0
        bc = n - start
        r = int(self.embeds.shape[0])
        rows = torch.arange(start, n, device=sample.device).repeat(r)

        def extend(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == n:
                return torch.cat([x, x[rows]])
            if isinstance(x, list | tuple):
                return type(x)(extend(v) for v in x)
            if isinstance(x, dict):
                return {k: extend(v) for k, v in x.items()}
            return x

        if args:  # encoder_hidden_states passed positionally
            kwargs["encoder_hidden_states"], args = args[0], args[1:]
        base_ehs = kwargs.pop("encoder_hidden_states")
        region_ehs = self.embeds.to(base_ehs.device, base_ehs.dtype)
        if region_ehs.shape[1:] != base_ehs.shape[1:]:
            raise GeneratorError(
                f"region prompt embeddings {tuple(region_ehs.shape[1:])} do not match the base "
                f"prompt's {tuple(base_ehs.shape[1:])}; regional layouts need the plain CLIP "
                "prompt encoding (no long-prompt weighting)"
            )
        return_dict = kwargs.pop("return_dict", True)
        added = kwargs.pop("added_cond_kwargs", None)
        kwargs = {k: extend(v) for k, v in kwargs.items()}
        if added is not None:
            pooled = added.get("text_embeds")
            added = {k: extend(v) for k, v in added.items() if k != "text_embeds"}
            if pooled is not None:
                if self.pooled is None:
                    raise GeneratorError("this UNet wants pooled text embeddings (SDXL) per region")
                region_pooled = self.pooled.to(pooled.device, pooled.dtype)
                added["text_embeds"] = torch.cat([pooled, region_pooled.repeat_interleave(bc, 0)])
        out = self.inner(
            extend(sample),
            extend(timestep),
            *args,
            encoder_hidden_states=torch.cat([base_ehs, region_ehs.repeat_interleave(bc, 0)]),
            added_cond_kwargs=added,
            return_dict=False,
            **kwargs,
        )[0]
        base, regions = out[:n], out[n:].reshape(r, bc, *out.shape[1:])
        masks = region_masks(
            self.layout.boxes(), out.shape[-2], out.shape[-1], device=out.device, dtype=out.dtype
        )
        self.masks = masks
        self.steps += 1
        keep = 1.0 - self.layout.base_ratio
        coverage = masks.sum(0)  # (1, h, w)
        blended = base[start:] * (1.0 - keep * coverage) + keep * (masks[:, None] * regions).sum(0)
        eps = torch.cat([base[:start], blended]) if start else blended
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=eps)
        return (eps,)


def check_regional(pipe: Any, model: str) -> None:
    """Raise a clear error unless `pipe` is a UNet pipeline regional layouts can drive."""
    from generators.families import info_from_pipeline

    info = info_from_pipeline(pipe)
    if not info.regional:
        raise GeneratorError(
            f"regional layouts need an SD 1.x/2.x/SDXL UNet pipeline; {model!r} is "
            f"{info.pipeline_class} (family {info.family}); fix: send the request without "
            "`layout` (fold the regions into the prompt) or use an SD/SDXL model"
        )


@contextmanager
def regional_unet(pipe: Any, layout: RegionalLayout, device: Any) -> Iterator[RegionalDenoiser]:
    """Swap `pipe.unet.forward` for a `RegionalDenoiser` for the length of the block."""
    import torch

    with torch.no_grad():
        embeds, pooled = encode_regions(pipe, [r.prompt for r in layout.regions], device)
    unet = pipe.unet
    had_own = "forward" in unet.__dict__
    previous = unet.__dict__.get("forward")
    denoiser = RegionalDenoiser(pipe, layout, embeds, pooled, unet.forward)
    unet.forward = denoiser.forward
    try:
        yield denoiser
    finally:
        if had_own:
            unet.forward = previous
        else:
            del unet.forward
