"""Which IP-Adapter a model gets, whether its weights are in reach, and loading it.

IP-Adapter weights are per model family (an SD 1.5 adapter does not fit an SDXL UNet), so the
choice follows the family (`generators.families.IP_ADAPTER_DEFAULTS`) unless the settings name
a file. A missing or unloadable adapter does not fail the image: the generation goes on
without it and every reference of the result says `used=False` and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generators.families import IpAdapterSpec, ModelInfo, default_ip_adapter
from generators.settings import GeneratorSettings

log = logging.getLogger(__name__)

_ENV = "GROUNDWORK_GENERATOR__IP_ADAPTER"


@dataclass(frozen=True)
class IpAdapterPlan:
    """The adapter to load (None: none) and whether its weights can be had; `why` explains."""

    spec: IpAdapterSpec | None
    available: bool
    why: str


def _offline(settings: GeneratorSettings) -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return settings.local_files_only or env


def ip_adapter_plan(settings: GeneratorSettings, info: ModelInfo) -> IpAdapterPlan:
    """Decide the adapter from the settings and the model family; only looks for files."""
    if info.edit is not None:
        return IpAdapterPlan(
            None, False, f"{info.pipeline_class} takes reference images as edit images"
        )
    if not settings.ip_adapter:
        return IpAdapterPlan(
            None,
            False,
            f"no IP-Adapter configured; set {_ENV}=auto (or an adapter repo/folder) to let "
            "reference images steer the image",
        )
    family_spec, family_why = default_ip_adapter(info.family)
    if info.family == "unknown":
        family_why += f" ({info.pipeline_class}, cross_attention_dim {info.cross_attention_dim})"
    if settings.ip_adapter == "auto":
        if family_spec is None:
            return IpAdapterPlan(None, False, family_why)
        spec = family_spec
    else:
        weight = settings.ip_adapter_weight_name or (
            family_spec.weight_name if family_spec else None
        )
        if weight is None:
            return IpAdapterPlan(
                None,
                False,
                f"{family_why}; IP-Adapter {settings.ip_adapter!r} needs "
                f"{_ENV}_WEIGHT_NAME (and _SUBFOLDER) for this model",
            )
        subfolder = settings.ip_adapter_subfolder or (
            family_spec.subfolder if family_spec else "models"
        )
        spec = IpAdapterSpec(settings.ip_adapter, subfolder, weight)
    return _locate(spec, settings)


def _locate(spec: IpAdapterSpec, settings: GeneratorSettings) -> IpAdapterPlan:
    rel = f"{spec.subfolder}/{spec.weight_name}" if spec.subfolder else spec.weight_name
    folder = Path(spec.repo).expanduser()
    if folder.is_dir() or spec.repo.startswith(("/", ".", "~")):
        if (folder / rel).is_file():
            return IpAdapterPlan(spec, True, f"IP-Adapter {folder / rel}")
        return IpAdapterPlan(
            spec,
            False,
            f"IP-Adapter weights {folder / rel} do not exist; fix: point {_ENV} at a folder "
            "laid out like h94/IP-Adapter, or unset it",
        )
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec.repo, rel)
    except ValueError:
        cached = None
    if isinstance(cached, str):
        return IpAdapterPlan(spec, True, f"IP-Adapter {spec.repo} {rel} (HF cache)")
    if _offline(settings):
        return IpAdapterPlan(
            spec,
            False,
            f"IP-Adapter {spec.repo} {rel} is not in the Hugging Face cache and downloads are "
            f"off; fix: `hf download {spec.repo} --include '{rel}' "
            f"'{spec.subfolder}/image_encoder/*'` where there is internet",
        )
    return IpAdapterPlan(spec, True, f"IP-Adapter {spec.repo} {rel} (will download)")


def load_ip_adapter(
    pipe: Any, plan: IpAdapterPlan, settings: GeneratorSettings
) -> tuple[bool, str]:
    """Load the planned adapter into `pipe`; (True, what) or (False, why not), never raises
    for a missing or unfit adapter: references are then reported unused with this reason."""
    if plan.spec is None or not plan.available:
        return False, plan.why
    if not hasattr(pipe, "load_ip_adapter"):
        return False, f"{type(pipe).__name__} cannot load IP-Adapters"
    spec = plan.spec
    try:
        pipe.load_ip_adapter(
            spec.repo,
            subfolder=spec.subfolder,
            weight_name=spec.weight_name,
            local_files_only=_offline(settings),
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        # A download error leaves the pipeline as it was; a half-applied adapter (wrong family)
        # must not stay in the UNet: put the default attention processors back.
        with contextlib.suppress(AttributeError, ValueError, KeyError, RuntimeError):
            pipe.unload_ip_adapter()
        first = str(e).splitlines()[0] if str(e) else ""
        why = (
            f"IP-Adapter {spec.repo} ({spec.subfolder}/{spec.weight_name}) could not be loaded "
            f"({type(e).__name__}: {first}); fix: `hf download {spec.repo}` or set {_ENV} to "
            "an adapter that fits this model"
        )
        log.warning("%s", why)
        return False, why
    pipe.set_ip_adapter_scale(settings.ip_adapter_scale)
    return True, plan.why
