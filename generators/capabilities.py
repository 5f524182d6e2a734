"""What a generator can do with a request, asked before the request is written.

The agent needs to know, per model: whether reference images reach the pixels (and how
many), whether the prompt may keep Gen-Searcher's ordinal phrases ("the first reference
image": only an editing model that receives the images in order understands them), how many
tokens the text encoder reads, and whether regional layouts and native inpainting exist.
`capabilities(generator)` answers for any `Generator`: the diffusers backend from its pipeline
(or its configs), any other (the queue client) from the model's configs and tokenizer files
plus the generator settings the workers share.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from generators.base import GeneratorError, default_model_of
from generators.families import (
    IP_ADAPTER_MAX_IMAGES,
    Family,
    ModelInfo,
    model_info,
)
from generators.prompt_budget import PromptBudget
from generators.settings import GeneratorSettings
from generators.tuned import tuned_base

log = logging.getLogger(__name__)


class GeneratorCapabilities(BaseModel):
    """A model's abilities as far as the agent's prompt writing is concerned."""

    model: str
    family: Family = "unknown"
    pipeline_class: str = ""
    takes_references: bool = Field(
        default=False, description="Reference images' pixels reach the model."
    )
    reference_mode: Literal["ip_adapter", "edit_image", "none"] = "none"
    max_references: int = Field(default=0, description="At most this many are used, in order.")
    keeps_ordinal_phrases: bool = Field(
        default=False,
        description="True: the model receives the references in request order and reads "
        "phrases like 'the first reference image' (editing models). False: rewrite them into "
        "what each reference shows.",
    )
    references_why: str = Field(default="", description="Why references are (not) used.")
    prompt_token_budget: int | None = Field(
        default=None, description="Tokens (start/end included) the text encoder reads."
    )
    tokenizers: list[str] = Field(
        default_factory=list, description="Tokenizers that count the budget (PromptBudget)."
    )
    prompt_budget_why: str = ""
    regional_layout: bool = Field(default=False, description="request.layout is honoured.")
    inpaint: Literal["native", "latent_blend", "unknown"] = Field(
        default="unknown",
        description="native: a 9-channel inpainting UNet; latent_blend: an ordinary model, "
        "the masked latents are denoised and the original is put back outside the mask.",
    )
    batched_seeds: bool = Field(
        default=False, description="generate_many makes N seeds in one pipeline call."
    )


@runtime_checkable
class Describes(Protocol):
    """A generator that can say what a model can do itself (the diffusers backend reads its
    loaded pipeline); any other is described from the model's files by `capabilities()`."""

    async def capabilities(self, model: str | None = None) -> GeneratorCapabilities: ...


def describe(
    model: str,
    info: ModelInfo | None,
    *,
    ip_adapter: tuple[bool, str],
    budget: PromptBudget | None,
    budget_why: str = "",
    batched_seeds: bool = False,
) -> GeneratorCapabilities:
    """Capabilities from what is known of the model; `ip_adapter` = (usable, why not)."""
    caps = GeneratorCapabilities(
        model=model,
        prompt_token_budget=budget.max_tokens if budget is not None else None,
        tokenizers=list(budget.tokenizers) if budget is not None else [],
        prompt_budget_why=budget_why,
        batched_seeds=batched_seeds,
    )
    if info is None:
        caps.references_why = f"the configs of {model!r} are not available here"
        return caps
    caps.family = info.family
    caps.pipeline_class = info.pipeline_class
    caps.regional_layout = info.regional
    if info.unet_in_channels is not None:
        caps.inpaint = "native" if info.unet_in_channels == 9 else "latent_blend"
    elif not info.has_unet and info.pipeline_class:
        caps.inpaint = "latent_blend"
    edit = info.edit
    if edit is not None:
        caps.takes_references = True
        caps.reference_mode = "edit_image"
        caps.max_references = edit.max_images
        caps.keeps_ordinal_phrases = True
        caps.references_why = (
            f"{info.pipeline_class} is an editing pipeline: the first {edit.max_images} "
            "reference image(s) go in its `image` argument, in request order"
        )
        return caps
    usable, why = ip_adapter
    if usable:
        caps.takes_references = True
        caps.reference_mode = "ip_adapter"
        caps.max_references = IP_ADAPTER_MAX_IMAGES
        caps.references_why = (
            "IP-Adapter: the references steer the image in request order, but the text "
            "encoder cannot tell them apart by position"
        )
    else:
        caps.references_why = why
    return caps


def budget_or_why(
    model: str, local_files_only: bool | None = None
) -> tuple[PromptBudget | None, str]:
    """The model's PromptBudget, or None and why it could not be read."""
    try:
        return PromptBudget.from_model(model, local_files_only=local_files_only), ""
    except GeneratorError as e:
        return None, str(e)


def static_capabilities(
    model: str, settings: GeneratorSettings | None = None
) -> GeneratorCapabilities:
    """Capabilities from the model's config files alone (the pipeline may be on a worker).

    Whether an IP-Adapter is usable comes from `settings` (the workers' generator settings,
    normally the same environment) and whether its weights file is in reach; without settings
    references are reported as not used. A tuned folder is described by its base model's
    configs and tokenizers (how a queue client, which has no pipeline, describes it).
    """
    from generators.ip_adapter import ip_adapter_plan

    info = model_info(tuned_base(model))
    local_only = settings.local_files_only if settings is not None else None
    budget, budget_why = budget_or_why(model, local_only)
    if settings is None:
        ip = (False, "the generator's IP-Adapter settings are not known here")
    elif info is None:
        ip = (False, f"the configs of {model!r} are not available here")
    else:
        plan = ip_adapter_plan(settings, info)
        ip = (plan.spec is not None and plan.available, plan.why)
    return describe(model, info, ip_adapter=ip, budget=budget, budget_why=budget_why)


async def capabilities(
    generator: Any, model: str | None = None, *, settings: GeneratorSettings | None = None
) -> GeneratorCapabilities:
    """The capabilities of `generator` for `model` (None = its default model).

    Uses `generator.capabilities(model)` when it has one (the diffusers backend); otherwise
    reads the model's configs and tokenizers (`static_capabilities`), with `settings` telling
    what the workers are configured with.
    """
    if isinstance(generator, Describes):
        return await generator.capabilities(model)
    name = model or default_model_of(generator) or (settings.model if settings else None)
    if not name:
        return GeneratorCapabilities(
            model="", references_why="the generator names no model", prompt_budget_why="no model"
        )
    return await asyncio.to_thread(static_capabilities, name, settings)
