"""The in-process generator: one resident diffusers pipeline behind the `Generator` protocol.

Loading a diffusion model takes seconds to minutes and gigabytes of GPU memory, so the pipeline
is loaded once (lazily, on the first request or `warmup()`) and kept. img2img and inpainting
reuse the same weights through `from_pipe`. The pipeline call blocks, so it runs in a worker
thread; a lock keeps it to one call at a time because a pipeline object is not re-entrant.

torch and diffusers are imported inside functions: `check_model_available` is the CLI's
pre-flight and must answer in milliseconds without them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from generators.artifacts import ArtifactNotFound, ArtifactStore
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    ModelNotFoundError,
    ProgressCallback,
)
from generators.batching import batch_key, snap_size
from generators.settings import GeneratorSettings

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FIX_ENV = "GROUNDWORK_GENERATOR__MODEL"

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
"""Short scheduler names accepted in settings and requests (any diffusers class name works too)."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files come from: decided before any weights are read."""

    model: str
    source: Literal["folder", "cache", "hub"]
    location: str


def _offline(local_files_only: bool) -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return local_files_only or env in {"1", "true", "yes", "on"}


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _looks_like_path(model: str) -> bool:
    if model.startswith(("/", "./", "../", "~", ".\\")) or "\\" in model:
        return True
    return Path(model).expanduser().exists() or not _HUB_ID_RE.match(model)


def resolve_model(model: str, *, local_files_only: bool) -> ResolvedModel:
    """Local folder with model_index.json > HF cache > the hub (when allowed); else a clear error.

    Only metadata is touched (a directory listing, a cache lookup, at most one HEAD request).
    """
    if not model.strip():
        raise ModelNotFoundError(
            f"no generator model configured; set {_FIX_ENV} to a diffusers hub id "
            "(e.g. stabilityai/sd-turbo) or a local pipeline folder"
        )
    if _looks_like_path(model):
        folder = Path(model).expanduser().resolve()
        if not folder.is_dir():
            raise ModelNotFoundError(
                f"generator model folder {folder} does not exist; fix: point {_FIX_ENV} at a "
                "folder written by pipe.save_pretrained() (or `python -m generators.tiny "
                f"{folder}` for a tiny test pipeline), or use a hub id like stabilityai/sd-turbo"
            )
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"generator model folder {folder} has no model_index.json, so it is not a "
                "diffusers pipeline; fix: save one there with pipe.save_pretrained(), or set "
                f"{_FIX_ENV} to a hub id like stabilityai/sd-turbo"
            )
        return ResolvedModel(model, "folder", str(folder))

    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hf_cache_dir()
    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return ResolvedModel(model, "cache", str(Path(cached).parent))
    if _offline(local_files_only):
        why = "local_files_only is set" if local_files_only else "HF_HUB_OFFLINE is set"
        raise ModelNotFoundError(
            f"generator model {model!r} is not in the Hugging Face cache ({cache_dir}) and "
            f"downloads are off ({why}); fix: run `hf download {model}` (older: "
            f"`huggingface-cli download {model}`) on a machine with internet and copy the "
            f"cache, or set {_FIX_ENV} to a local pipeline folder"
        )
    from huggingface_hub import file_exists

    try:
        found = file_exists(model, "model_index.json")
    except _hub_unreachable_errors() as e:
        raise ModelNotFoundError(
            f"generator model {model!r} is not in the Hugging Face cache ({cache_dir}) and the "
            f"hub could not be reached ({type(e).__name__}: {e}); fix: run `hf download "
            f"{model}` where there is internet, or set {_FIX_ENV} to a local pipeline folder"
        ) from e
    if not found:
        raise ModelNotFoundError(
            f"generator model {model!r} has no model_index.json on the Hugging Face hub (not a "
            f"diffusers pipeline, private, or misspelt) and is not in the cache ({cache_dir}); "
            f"fix: check the id, log in with `hf auth login` for gated models, or set {_FIX_ENV} "
            "to a local pipeline folder"
        )
    return ResolvedModel(model, "hub", f"https://huggingface.co/{model}")


def _hub_unreachable_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub cannot be asked.

    huggingface_hub 1.x speaks httpx, 2.x its own fork `httpx2`; a transport error of either must
    become a ModelNotFoundError, not a traceback (seen offline with hub 2.4).
    """
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def check_model_available(model: str, *, local_files_only: bool) -> None:
    """Pre-flight for the CLI: raises ModelNotFoundError before research starts; loads nothing."""
    resolve_model(model, local_files_only=local_files_only)


def resolve_device(setting: str) -> str:
    """auto = cuda > mps > cpu; an explicit device that is not there is an error, not a fallback."""
    import torch

    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise GeneratorError(
            f"generator device {setting!r} requested but torch sees no CUDA GPU (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); fix: set "
            "GROUNDWORK_GENERATOR__DEVICE=auto or cpu, or install a CUDA build of torch"
        )
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """auto: bfloat16 on CUDA GPUs that support it (no fp16 VAE overflow), else float16 on
    CUDA/MPS, float32 on CPU (half precision on CPU is slow or unsupported)."""
    import torch

    if setting != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            setting
        ]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """diffusers renamed torch_dtype to dtype (and warns on the old name); support both."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _scheduler_class(name: str) -> tuple[Any, dict[str, Any]]:
    import diffusers

    cls_name, extra = SCHEDULERS.get(name.lower(), (name, {}))
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise GeneratorError(
            f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} or a diffusers "
            "scheduler class name such as DPMSolverMultistepScheduler"
        )
    return cls, extra


@dataclass
class _Loaded:
    model: str
    pipe: Any
    device: str
    dtype: str
    ip_adapter: bool
    default_scheduler: Any
    modes: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)

    def for_mode(self, mode: str) -> Any:
        if mode == "text2img":
            return self.pipe
        if mode not in self.modes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            try:
                p = auto.from_pipe(self.pipe)
            except ValueError as e:
                raise GeneratorError(
                    f"model {self.model!r} has no {mode} pipeline in diffusers ({e}); fix: use "
                    "an SD/SDXL/Flux-family model for edits, or mode text2img"
                ) from e
            p.set_progress_bar_config(disable=True)
            self.modes[mode] = p
        return self.modes[mode]

    def scheduler(self, name: str | None) -> Any:
        if not name:
            return self.default_scheduler
        if name not in self.schedulers:
            cls, extra = _scheduler_class(name)
            self.schedulers[name] = cls.from_config(self.default_scheduler.config, **extra)
        return self.schedulers[name]


class DiffusersGenerator:
    """A `Generator` running a diffusers pipeline in this process (CPU, CUDA or MPS)."""

    def __init__(self, settings: GeneratorSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- loading -------------------------------------------------------------------------

    @property
    def device(self) -> str | None:
        return self._loaded.device if self._loaded else None

    def _load(self, model: str) -> _Loaded:
        """Called with the lock held. Replaces a different resident model (one fits in VRAM)."""
        if self._loaded is not None and self._loaded.model == model:
            return self._loaded
        resolved = resolve_model(model, local_files_only=self.settings.local_files_only)
        import torch
        from diffusers import AutoPipelineForText2Image

        if self._loaded is not None:
            log.info("unloading %s to load %s", self._loaded.model, model)
            self._loaded = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.dtype, device)
        source = resolved.location if resolved.source == "folder" else model
        t0 = time.perf_counter()
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(
                source,
                local_files_only=resolved.source != "hub",
                **_dtype_kwarg(dtype),
            )
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"could not load generator model {model!r} from {resolved.location} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); fix: "
                f"re-download it with `hf download {model}` or set {_FIX_ENV} to a complete "
                "pipeline folder"
            ) from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        ip = False
        if self.settings.ip_adapter:
            self._load_ip_adapter(pipe)
            ip = True
        if self.settings.compile:
            self._compile(pipe)
        loaded = _Loaded(
            model=model,
            pipe=pipe,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            ip_adapter=ip,
            default_scheduler=pipe.scheduler,
        )
        if self.settings.scheduler:
            pipe.scheduler = loaded.scheduler(self.settings.scheduler)
            loaded.default_scheduler = pipe.scheduler
        log.info(
            "loaded %s (%s) on %s as %s in %.1fs",
            model,
            resolved.source,
            device,
            loaded.dtype,
            time.perf_counter() - t0,
        )
        self._loaded = loaded
        return loaded

    def _load_ip_adapter(self, pipe: Any) -> None:
        s = self.settings
        assert s.ip_adapter is not None
        try:
            pipe.load_ip_adapter(
                s.ip_adapter,
                subfolder=s.ip_adapter_subfolder,
                weight_name=s.ip_adapter_weight_name,
                local_files_only=s.local_files_only or _offline(False),
            )
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"IP-Adapter {s.ip_adapter!r} ({s.ip_adapter_subfolder}/"
                f"{s.ip_adapter_weight_name}) could not be loaded ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); fix: `hf download {s.ip_adapter}` "
                "or unset GROUNDWORK_GENERATOR__IP_ADAPTER"
            ) from e
        pipe.set_ip_adapter_scale(s.ip_adapter_scale)

    def _compile(self, pipe: Any) -> None:
        import torch

        for name in ("unet", "transformer"):
            module = getattr(pipe, name, None)
            if module is not None:
                setattr(pipe, name, torch.compile(module, mode=self.settings.compile_mode))
                log.info("torch.compile(%s, mode=%s)", name, self.settings.compile_mode)

    async def warmup(self) -> float:
        """Load the default model and make one image at the default size; returns seconds.

        With compile on, the first call per shape compiles for minutes; a worker does it before
        taking jobs so no user request pays for it.
        """
        t0 = time.perf_counter()
        s = self.settings
        if s.compile or s.warmup:
            await self.generate(
                GenerationRequest(prompt="warm-up", width=s.width, height=s.height, seed=0)
            )
        else:
            await asyncio.to_thread(self._locked, lambda: self._load(s.model))
        return time.perf_counter() - t0

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._closed:
                raise GeneratorError("generator is closed")
            return fn()

    # -- generation ----------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        results = await self.generate_batch([request], [on_progress], should_cancel=should_cancel)
        return results[0]

    async def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: Sequence[ProgressCallback | None] | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Several requests; compatible text-to-image ones (see `batch_key`) share one call.

        Progress callbacks run on the event loop thread, not the pipeline thread, so they may
        touch asyncio objects. `should_cancel` is polled after every denoising step.
        """
        if not requests:
            return []
        callbacks = list(on_progress) if on_progress is not None else [None] * len(requests)
        loop = asyncio.get_running_loop()

        def threadsafe(cb: ProgressCallback | None) -> ProgressCallback | None:
            if cb is None:
                return None

            def call(step: int, total: int) -> None:
                loop.call_soon_threadsafe(cb, step, total)

            return call

        groups: list[list[int]] = []
        by_key: dict[tuple[object, ...], list[int]] = {}
        for i, r in enumerate(requests):
            # IP-Adapter embeddings are per adapter, not per prompt: never batch with one.
            key = None if self.settings.ip_adapter else batch_key(r, self.settings.model)
            if key is None:
                groups.append([i])
            elif key in by_key and len(by_key[key]) < self.settings.max_batch_size:
                by_key[key].append(i)
            else:
                by_key[key] = [i]
                groups.append(by_key[key])
        out: list[GenerationResult | None] = [None] * len(requests)
        for group in groups:
            reqs = [requests[i] for i in group]
            cbs = [threadsafe(callbacks[i]) for i in group]
            run = functools.partial(self._run, reqs, cbs, should_cancel)
            results = await asyncio.to_thread(self._locked, run)
            for i, res in zip(group, results, strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def _image(self, sha: str, what: str, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
        try:
            im = self.store.open_image(sha)
        except ArtifactNotFound as e:
            raise GeneratorError(
                f"{what} {sha} is not in the artifact store {self.store.root}; fix: store it "
                "first (ArtifactStore.put_image) on a volume this generator mounts"
            ) from e
        im = im.convert(mode)
        return im if im.size == size else im.resize(size)

    def _run(
        self,
        requests: list[GenerationRequest],
        callbacks: list[ProgressCallback | None],
        should_cancel: Callable[[], bool] | None,
    ) -> list[GenerationResult]:
        """Runs in a worker thread with the lock held."""
        import torch

        first = requests[0]
        model = first.model or self.settings.model
        loaded = self._load(model)
        pipe = loaded.for_mode(first.mode)
        width, height = snap_size(first.width, first.height, self.settings.size_buckets)
        steps = first.steps or self.settings.steps
        guidance = (
            first.guidance_scale
            if first.guidance_scale is not None
            else self.settings.guidance_scale
        )
        gen_device = "cpu" if loaded.device == "mps" else loaded.device
        generators = [torch.Generator(gen_device).manual_seed(r.seed) for r in requests]
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in requests],
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generators if len(generators) > 1 else generators[0],
            "output_type": "pil",
        }
        if any(r.negative_prompt for r in requests):
            kwargs["negative_prompt"] = [r.negative_prompt for r in requests]
        if first.mode == "text2img":
            kwargs.update(width=width, height=height)
        else:
            if first.init_image is None:
                raise GeneratorError(
                    f"mode {first.mode} needs init_image (sha256 of the image to edit)"
                )
            kwargs["image"] = self._image(first.init_image, "init_image", (width, height))
            kwargs["strength"] = first.strength
            if first.mode == "inpaint":
                if first.mask_image is None:
                    raise GeneratorError("mode inpaint needs mask_image (sha256 of the mask)")
                kwargs["mask_image"] = self._image(
                    first.mask_image, "mask_image", (width, height), "L"
                )
                kwargs.update(width=width, height=height)
        references = 0
        if loaded.ip_adapter:
            if first.reference_images:
                refs = [
                    self._image(sha, "reference image", (224, 224))
                    for sha in first.reference_images
                ]
                kwargs["ip_adapter_image"] = [refs]
                pipe.set_ip_adapter_scale(self.settings.ip_adapter_scale)
                references = len(refs)
            else:
                from PIL import Image

                # A loaded adapter always needs an image; scale 0 makes it a no-op.
                kwargs["ip_adapter_image"] = [Image.new("RGB", (224, 224))]
                pipe.set_ip_adapter_scale(0.0)
        elif first.reference_images:
            log.warning(
                "%d reference image(s) ignored: no IP-Adapter configured "
                "(set GROUNDWORK_GENERATOR__IP_ADAPTER, e.g. h94/IP-Adapter)",
                len(first.reference_images),
            )

        def on_step_end(
            p: Any, step: int, timestep: Any, cb_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled("generation cancelled")
            total = int(getattr(p, "_num_timesteps", 0) or steps)
            for cb in callbacks:
                if cb is not None:
                    cb(step + 1, total)
            return cb_kwargs

        kwargs["callback_on_step_end"] = on_step_end
        pipe.scheduler = loaded.scheduler(first.scheduler)
        t0 = time.perf_counter()
        try:
            images = pipe(**kwargs).images
        except GeneratorError:
            raise
        except Exception as e:
            # Anything from torch/diffusers (OOM, bad shapes, NaNs) becomes a job error with
            # context; the original stays chained for the log.
            raise GeneratorError(
                f"{first.mode} with {model!r} on {loaded.device} failed: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        finally:
            pipe.scheduler = loaded.default_scheduler
        elapsed = time.perf_counter() - t0
        sched_name = (
            first.scheduler or self.settings.scheduler or type(loaded.default_scheduler).__name__
        )
        results = []
        for r, image in zip(requests, images, strict=True):
            ref = self.store.put_image(
                image,
                {
                    "prompt": r.prompt,
                    "negative_prompt": r.negative_prompt,
                    "seed": r.seed,
                    "model": model,
                    "mode": r.mode,
                    "steps": steps,
                    "guidance_scale": guidance,
                    "scheduler": sched_name,
                    "strength": r.strength if r.mode != "text2img" else None,
                    "init_image": r.init_image,
                    "mask_image": r.mask_image,
                    "reference_images": r.reference_images,
                    "references_used": references,
                    "request_key": r.idempotency_key(),
                    "device": loaded.device,
                    "dtype": loaded.dtype,
                    "generator": "diffusers",
                },
            )
            results.append(
                GenerationResult(
                    image=ref,
                    seed=r.seed,
                    model=model,
                    mode=r.mode,
                    steps=steps,
                    device=loaded.device,
                    elapsed_s=elapsed,
                    references_used=references,
                )
            )
        return results

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                self._loaded = None

        await asyncio.to_thread(close)
