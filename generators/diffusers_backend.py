"""The in-process generator: one resident diffusers pipeline behind the `Generator` protocol.

Loading a diffusion model takes seconds to minutes and gigabytes of GPU memory, so the pipeline
is loaded once (lazily on the first request, or in the background from `warm()`) and kept.
img2img and inpainting reuse the same weights through `from_pipe`. The pipeline call blocks, so
it runs in a worker thread; a lock keeps it to one call at a time because a pipeline object is
not re-entrant.

torch and diffusers are imported inside functions: `check_model_available` is the CLI's
pre-flight and must answer in milliseconds without them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.artifacts import ArtifactNotFound, ArtifactStore
from core.device import resolve_device, resolve_dtype
from core.images import ImageRejected
from core.imports import heavy_imports
from generators.base import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    ModelNotFoundError,
    ProgressCallback,
    ReferenceUse,
)
from generators.batching import MIN_EDIT_STRENGTH, batch_key, edit_steps, snap_size
from generators.capabilities import GeneratorCapabilities, describe, static_capabilities
from generators.families import IP_ADAPTER_MAX_IMAGES, ModelInfo, info_from_pipeline, model_info
from generators.ip_adapter import ip_adapter_plan, load_ip_adapter
from generators.prompt_budget import PromptBudget
from generators.regional import check_regional, regional_unet
from generators.settings import GeneratorSettings
from generators.tuned import LORA_MANIFEST, LORA_WEIGHTS, tuned_base
from generators.tuned import looks_like_path as _looks_like_path

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

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
    lora: str | None = None
    """A tuned folder's LoRA on top of `model` (then the base model's id or folder)."""
    lora_weight_name: str = LORA_WEIGHTS


def _offline(local_files_only: bool) -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return local_files_only or env in {"1", "true", "yes", "on"}


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


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
                "folder written by pipe.save_pretrained() (or `python -m "
                f"tests.support.tiny_pipeline {folder}` for a tiny test pipeline), or use a hub "
                "id like stabilityai/sd-turbo"
            )
        if (folder / LORA_MANIFEST).is_file() and not (folder / "model_index.json").is_file():
            return _resolve_tuned(folder, local_files_only=local_files_only)
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


def _resolve_tuned(folder: Path, *, local_files_only: bool) -> ResolvedModel:
    """A tuned folder: its manifest's base model (resolved as usual) plus its LoRA weights."""
    import json

    try:
        manifest = json.loads((folder / LORA_MANIFEST).read_text(encoding="utf-8"))
        base = str(manifest["base_model"])
        weight = str(manifest.get("weight_name") or LORA_WEIGHTS)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelNotFoundError(
            f"tuned folder {folder} has an unreadable {LORA_MANIFEST} ({type(e).__name__}: {e}); "
            "fix: rerun the `groundwork tune` command that wrote it"
        ) from e
    if not (folder / weight).is_file():
        raise ModelNotFoundError(
            f"tuned folder {folder} lacks its LoRA weights {weight}; fix: rerun the `groundwork "
            "tune` command that wrote it (or copy the whole folder)"
        )
    resolved = resolve_model(base, local_files_only=local_files_only)
    if resolved.lora is not None:
        raise ModelNotFoundError(
            f"tuned folder {folder} names another tuned folder ({base}) as its base; fix: "
            "point base_model at a diffusers model"
        )
    return ResolvedModel(base, resolved.source, resolved.location, str(folder), weight)


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
    default_scheduler: Any
    info: ModelInfo
    ip_adapter: bool = False
    ip_why: str = ""
    base: str = ""
    """Where the base weights came from; a request for the same base with another (or no)
    tuned LoRA switches adapters instead of reloading the pipeline."""
    lora: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    modes: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    budget: PromptBudget | None = None

    def for_mode(self, mode: str) -> Any:
        # An editing pipeline (Kontext, Qwen-Image-Edit) edits its input image itself.
        if mode == "text2img" or (mode == "img2img" and self.info.edit is not None):
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


def _use_lora(loaded: _Loaded, resolved: ResolvedModel) -> None:
    """Make the resident pipeline run with the tuned folder's LoRA (loaded once, kept as a named
    adapter) or with none; img2img/inpaint pipelines share the UNet, so they follow."""
    import hashlib

    if resolved.lora == loaded.lora:
        return
    pipe = loaded.pipe
    if resolved.lora is None:
        pipe.disable_lora()
        loaded.lora = None
        return
    name = loaded.adapters.get(resolved.lora)
    if name is None:
        name = "tuned_" + hashlib.sha256(resolved.lora.encode()).hexdigest()[:12]
        try:
            pipe.load_lora_weights(
                resolved.lora, weight_name=resolved.lora_weight_name, adapter_name=name
            )
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise GeneratorError(
                f"the LoRA of tuned folder {resolved.lora} does not load onto {resolved.model} "
                f"({type(e).__name__}: {_first_line(e)}); fix: use the base model it was "
                "trained on, or retrain it"
            ) from e
        loaded.adapters[resolved.lora] = name
    pipe.enable_lora()
    pipe.set_adapters([name])
    loaded.lora = resolved.lora


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


class DiffusersGenerator:
    """A `Generator` running a diffusers pipeline in this process (CPU, CUDA or MPS).

    Beyond the protocol it has every optional capability (generators.base.Warmable,
    BatchGenerator, SeedBatchGenerator; capabilities.Describes; prompt_budget.CountsTokens)
    and `loads` (pipelines loaded so far).
    """

    def __init__(self, settings: GeneratorSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.loads = 0
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warming: dict[str, concurrent.futures.Future[None]] = {}
        self._loader: concurrent.futures.ThreadPoolExecutor | None = None
        self.warm_errors: dict[str, GeneratorError] = {}
        """Why the last background load (warm-up) of a model failed, per model."""

    @property
    def default_model(self) -> str:
        return self.settings.model

    # -- loading -------------------------------------------------------------------------

    @property
    def device(self) -> str | None:
        return self._loaded.device if self._loaded else None

    def _load(self, model: str) -> _Loaded:
        """Called with the lock held. Replaces a different resident model (one fits in VRAM).

        Any failure is one `GeneratorError` line (ModelNotFoundError for missing files).
        """
        if self._loaded is not None and self._loaded.model == model:
            return self._loaded
        resolved = resolve_model(model, local_files_only=self.settings.local_files_only)
        device = resolve_device(self.settings.device)
        try:
            loaded = self._loaded
            if loaded is not None and loaded.base == resolved.location and loaded.device == device:
                _use_lora(loaded, resolved)
                loaded.model = model
                return loaded
            return self._load_resolved(model, resolved, device)
        except GeneratorError:
            raise
        except Exception as e:
            # CUDA OOM in .to(device), a broken config...: one line for the job and the CLI.
            raise GeneratorError(
                f"loading generator model {model!r} on {device} failed: "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e

    def _load_resolved(self, model: str, resolved: ResolvedModel, device: str) -> _Loaded:
        heavy_imports("diffusers")  # never beside another thread's import (issue 21.3)
        import torch
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        if self._loaded is not None:
            log.info("unloading %s to load %s", self._loaded.model, model)
            self._loaded = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        dtype = resolve_dtype(self.settings.dtype, device)
        source = resolved.location if resolved.source == "folder" else resolved.model
        static = model_info(source)
        # AutoPipelineForText2Image has no entry for editing pipelines (Qwen-Image-Edit):
        # load those as the class their model_index.json names.
        loader = (
            DiffusionPipeline if static is not None and static.edit else AutoPipelineForText2Image
        )
        t0 = time.perf_counter()
        try:
            pipe = loader.from_pretrained(
                source,
                local_files_only=resolved.source != "hub",
                **_dtype_kwarg(dtype),
            )
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"could not load generator model {model!r} from {resolved.location} "
                f"({type(e).__name__}: {_first_line(e)}); fix: re-download it with "
                f"`hf download {model}` or set {_FIX_ENV} to a complete pipeline folder"
            ) from e
        self.loads += 1
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        info = info_from_pipeline(pipe)
        plan = ip_adapter_plan(self.settings, info)
        ip, ip_why = load_ip_adapter(pipe, plan, self.settings)
        if self.settings.ip_adapter and not ip and info.edit is None:
            log.warning("reference images will not be used: %s", ip_why)
        if self.settings.compile:
            self._compile(pipe)
        loaded = _Loaded(
            model=model,
            pipe=pipe,
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            default_scheduler=pipe.scheduler,
            info=info,
            ip_adapter=ip,
            ip_why=ip_why,
            base=resolved.location,
        )
        _use_lora(loaded, resolved)
        if self.settings.scheduler:
            pipe.scheduler = loaded.scheduler(self.settings.scheduler)
            loaded.default_scheduler = pipe.scheduler
        log.info(
            "loaded %s (%s, %s) on %s as %s in %.1fs",
            model,
            resolved.source,
            info.family,
            device,
            loaded.dtype,
            time.perf_counter() - t0,
        )
        self._loaded = loaded
        return loaded

    def _compile(self, pipe: Any) -> None:
        import torch

        for name in ("unet", "transformer"):
            module = getattr(pipe, name, None)
            if module is not None:
                setattr(pipe, name, torch.compile(module, mode=self.settings.compile_mode))
                log.info("torch.compile(%s, mode=%s)", name, self.settings.compile_mode)

    async def warm(self, model: str | None = None, *, wait: bool = False) -> None:
        """Start loading `model` (None = the default) in a background thread and return;
        with `compile` or `warmup` set, the same thread then makes one warm-up image.

        Idempotent: a load in progress or done is not started again. `generate` awaits the
        same load; if it failed, the first `generate` that needs the model raises that same
        one-line `GeneratorError` (a later one tries again). `wait=True` returns only when the
        load is over (raising its error).
        """
        name = model or self.settings.model
        future = self._start_load(name)
        if wait and future is not None:
            await self._await_load(name)

    def _start_load(self, model: str) -> concurrent.futures.Future[None] | None:
        if self._loaded is not None and self._loaded.model == model:
            return None
        future = self._warming.get(model)
        if future is not None and (not future.done() or future.exception() is not None):
            return future  # running, or failed and not yet reported
        if self._loader is None:
            self._loader = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="groundwork-load"
            )

        def load() -> None:
            try:
                self._locked(lambda: self._load(model))
                if self.settings.compile or self.settings.warmup:
                    # compile on: the first call per shape compiles for minutes; made here so
                    # no user request pays for it.
                    self._locked(lambda: self._warm_image(model))
            except GeneratorError as e:
                # Recorded where an operator looks (the log, `warm_errors`), not only in the
                # future that the first generate() re-raises (issue 21.3).
                self.warm_errors[model] = e
                log.warning("warm-up of %s failed: %s", model, e, exc_info=e.__cause__ or e)
                raise
            self.warm_errors.pop(model, None)

        future = self._loader.submit(load)
        self._warming[model] = future
        return future

    async def _await_load(self, model: str) -> None:
        """Wait for a background load of `model`, if one was started; re-raise its error once."""
        future = self._warming.get(model)
        if future is None:
            return
        try:
            await asyncio.wrap_future(future)
        except GeneratorError:
            if self._warming.get(model) is future:
                del self._warming[model]
            raise

    def _warm_image(self, model: str) -> None:
        """One image at the default size (called with the pipeline loaded, in the loader)."""
        s = self.settings
        request = GenerationRequest(
            prompt="warm-up", model=model, width=s.width, height=s.height, seed=0
        )
        self._run([request], [None], None)

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._closed:
                raise GeneratorError("generator is closed")
            return fn()

    # -- what the model can do -----------------------------------------------------------

    async def capabilities(self, model: str | None = None) -> GeneratorCapabilities:
        """What `model` (None = the default) can do; from the loaded pipeline when resident,
        else from its configs and tokenizer files (nothing is loaded)."""
        name = model or self.settings.model
        loaded = self._loaded
        if loaded is not None and loaded.model == name:
            try:
                budget, why = self._budget(loaded), ""
            except GeneratorError as e:
                budget, why = None, str(e)
            return describe(
                name,
                loaded.info,
                ip_adapter=(loaded.ip_adapter, loaded.ip_why),
                budget=budget,
                budget_why=why,
                batched_seeds=True,
            )
        caps = await asyncio.to_thread(static_capabilities, tuned_base(name), self.settings)
        return caps.model_copy(update={"batched_seeds": True})

    def prompt_budget(self, model: str | None = None) -> PromptBudget:
        """The token budget of `model`'s text encoder(s), counted with its own tokenizer(s)."""
        name = model or self.settings.model
        loaded = self._loaded
        if loaded is not None and loaded.model == name:
            return self._budget(loaded)
        return PromptBudget.from_model(
            tuned_base(name), local_files_only=True if self.settings.local_files_only else None
        )

    @staticmethod
    def _budget(loaded: _Loaded) -> PromptBudget:
        if loaded.budget is None:
            try:
                loaded.budget = PromptBudget.from_pipeline(loaded.pipe, model=loaded.model)
            except ValueError as e:
                raise GeneratorError(
                    f"{loaded.model!r} has no tokenizer to count with ({e})"
                ) from e
        return loaded.budget

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

    async def generate_many(
        self,
        request: GenerationRequest,
        seeds: Sequence[int],
        on_progress: ProgressCallback | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Best-of-N: `request` once per seed, as one pipeline call (`num_images_per_prompt`
        with one torch.Generator per seed), in chunks of `max_batch_size`.

        Result i is what `generate(request with seeds[i])` makes (bit-identical on CPU), with
        its own seed and request key, so the store and the queue's cache agree.
        """
        if not seeds:
            return []
        model = request.model or self.settings.model
        await self._await_load(model)
        cb = self._threadsafe(asyncio.get_running_loop(), on_progress)
        out: list[GenerationResult] = []
        size = self.settings.max_batch_size
        for i in range(0, len(seeds), size):
            chunk = list(seeds[i : i + size])
            run = functools.partial(self._run, [request], [cb], should_cancel, chunk)
            out.extend(await asyncio.to_thread(self._locked, run))
        return out

    @staticmethod
    def _threadsafe(
        loop: asyncio.AbstractEventLoop, cb: ProgressCallback | None
    ) -> ProgressCallback | None:
        if cb is None:
            return None

        def call(step: int, total: int) -> None:
            loop.call_soon_threadsafe(cb, step, total)

        return call

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
        groups: list[list[int]] = []
        by_key: dict[tuple[object, ...], list[int]] = {}
        for i, r in enumerate(requests):
            # IP-Adapter embeddings are per adapter and layouts per request: never batch those.
            alone = bool(self.settings.ip_adapter) or r.layout is not None
            key = None if alone else batch_key(r, self.settings.model)
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
            await self._await_load(reqs[0].model or self.settings.model)
            cbs = [self._threadsafe(loop, callbacks[i]) for i in group]
            run = functools.partial(self._run, reqs, cbs, should_cancel, None)
            results = await asyncio.to_thread(self._locked, run)
            for i, res in zip(group, results, strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def _image(
        self, sha: str, what: str, size: tuple[int, int] | None, mode: str = "RGB"
    ) -> Image.Image:
        try:
            im = self.store.open_image(sha)
        except ArtifactNotFound as e:
            raise GeneratorError(
                f"{what} {sha} is not in the artifact store {self.store.root}; fix: store it "
                "first (ArtifactStore.put_image) on a volume this generator mounts"
            ) from e
        except ImageRejected as e:
            raise GeneratorError(
                f"{what} {sha} in the artifact store does not decode safely ({e}); fix: "
                "use another image (a non-retryable input error)"
            ) from e
        im = im.convert(mode)
        return im if size is None or im.size == size else im.resize(size)

    def _references(
        self, loaded: _Loaded, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any]
    ) -> list[ReferenceUse]:
        """Put the request's reference images (in order) into `kwargs`; say what became of each.

        Editing pipelines get them as their `image` list (after the image being edited, in
        img2img), IP-Adapter pipelines as `ip_adapter_image`; otherwise none is used. A
        reference that is also the init image of an edit reached the model that way.
        """
        shas = request.reference_images
        uses: list[ReferenceUse] = []
        edit = loaded.info.edit
        if edit is not None and request.mode == "inpaint":
            # The inpaint variant's `image` is the picture being repainted.
            why = f"inpainting with {loaded.info.pipeline_class} takes no reference images"
            uses = [ReferenceUse(sha256=s, used=False, why=why) for s in shas]
        elif edit is not None:
            first: list[Image.Image] = []
            if request.mode == "img2img" and request.init_image is not None:
                first = [self._image(request.init_image, "init_image", None)]
            room = max(0, edit.max_images - len(first))
            images = first + [self._image(s, "reference image", None) for s in shas[:room]]
            if images:
                kwargs["image"] = images if edit.takes_list else images[0]
            for i, sha in enumerate(shas):
                if i < room:
                    pos = len(first) + i + 1
                    uses.append(
                        ReferenceUse(
                            sha256=sha,
                            used=True,
                            how="edit_image",
                            why=f"image {pos} of {len(images)} in {loaded.info.pipeline_class}'s "
                            "`image` input",
                        )
                    )
                else:
                    uses.append(
                        ReferenceUse(
                            sha256=sha,
                            used=False,
                            why=f"{loaded.info.pipeline_class} takes at most {edit.max_images} "
                            f"image(s); reference {i + 1} was left out",
                        )
                    )
        elif loaded.ip_adapter:
            scale = self.settings.ip_adapter_scale
            take = shas[:IP_ADAPTER_MAX_IMAGES]
            if take:
                kwargs["ip_adapter_image"] = [
                    [self._image(s, "reference image", (224, 224)) for s in take]
                ]
                pipe.set_ip_adapter_scale(scale)
            else:
                from PIL import Image

                # A loaded adapter always needs an image; scale 0 makes it a no-op.
                kwargs["ip_adapter_image"] = [Image.new("RGB", (224, 224))]
                pipe.set_ip_adapter_scale(0.0)
            for i, sha in enumerate(shas):
                if i >= IP_ADAPTER_MAX_IMAGES:
                    uses.append(
                        ReferenceUse(
                            sha256=sha,
                            used=False,
                            why=f"IP-Adapter takes at most {IP_ADAPTER_MAX_IMAGES} images; "
                            f"reference {i + 1} was left out",
                        )
                    )
                elif scale <= 0:
                    uses.append(ReferenceUse(sha256=sha, used=False, why="ip_adapter_scale is 0"))
                else:
                    uses.append(
                        ReferenceUse(
                            sha256=sha,
                            used=True,
                            how="ip_adapter",
                            why=f"IP-Adapter image {i + 1} of {len(take)} (scale {scale})",
                        )
                    )
        else:
            uses = [ReferenceUse(sha256=s, used=False, why=loaded.ip_why) for s in shas]
            if shas:
                log.warning("%d reference image(s) not used: %s", len(shas), loaded.ip_why)
        if request.mode != "text2img" and request.init_image is not None:
            uses = [
                u.model_copy(
                    update={
                        "used": True,
                        "how": "img2img_init",
                        "why": f"it is the init image of this {request.mode} request",
                    }
                )
                if not u.used and u.sha256 == request.init_image
                else u
                for u in uses
            ]
        return uses

    def _run(
        self,
        requests: list[GenerationRequest],
        callbacks: list[ProgressCallback | None],
        should_cancel: Callable[[], bool] | None,
        seeds: list[int] | None = None,
    ) -> list[GenerationResult]:
        """Runs in a worker thread with the lock held.

        `seeds` (one request only): best-of-N, `num_images_per_prompt=len(seeds)`.
        """
        import torch

        first = requests[0]
        model = first.model or self.settings.model
        loaded = self._load(model)
        pipe = loaded.for_mode(first.mode)
        edit = loaded.info.edit is not None
        width, height = snap_size(first.width, first.height, self.settings.size_buckets)
        steps = first.steps or self.settings.steps
        guidance = (
            first.guidance_scale
            if first.guidance_scale is not None
            else self.settings.guidance_scale
        )
        gen_device = "cpu" if loaded.device == "mps" else loaded.device
        all_seeds = seeds if seeds is not None else [r.seed for r in requests]
        generators = [torch.Generator(gen_device).manual_seed(s) for s in all_seeds]
        kwargs: dict[str, Any] = {
            "prompt": [
                r.layout.base_prompt if r.layout and r.layout.base_prompt else r.prompt
                for r in requests
            ],
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generators if len(generators) > 1 else generators[0],
            "output_type": "pil",
        }
        if seeds is not None and len(seeds) > 1:
            kwargs["num_images_per_prompt"] = len(seeds)
        if any(r.negative_prompt for r in requests):
            kwargs["negative_prompt"] = [r.negative_prompt for r in requests]
        if first.mode == "text2img" or (edit and first.mode == "img2img"):
            kwargs.update(width=width, height=height)
            if first.mode == "img2img" and first.init_image is None:
                raise GeneratorError("mode img2img needs init_image (sha256 of the image to edit)")
        else:
            if first.init_image is None:
                raise GeneratorError(
                    f"mode {first.mode} needs init_image (sha256 of the image to edit)"
                )
            kwargs["image"] = self._image(first.init_image, "init_image", (width, height))
            kwargs["strength"] = max(first.strength, MIN_EDIT_STRENGTH)
            kwargs["num_inference_steps"] = edit_steps(steps, first.strength)
            if first.mode == "inpaint":
                if first.mask_image is None:
                    raise GeneratorError("mode inpaint needs mask_image (sha256 of the mask)")
                kwargs["mask_image"] = self._image(
                    first.mask_image, "mask_image", (width, height), "L"
                )
                kwargs.update(width=width, height=height)
        references = self._references(loaded, pipe, first, kwargs)

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
        if first.layout is not None:
            check_regional(pipe, model)
        pipe.scheduler = loaded.scheduler(first.scheduler)
        t0 = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                if first.layout is not None:
                    stack.enter_context(regional_unet(pipe, first.layout, loaded.device))
                images = pipe(**kwargs).images
        except GeneratorError:
            raise
        except Exception as e:
            # Anything from torch/diffusers (OOM, bad shapes, NaNs) becomes a job error with
            # context; the original stays chained for the log.
            raise GeneratorError(
                f"{first.mode} with {model!r} on {loaded.device} failed: "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
        finally:
            pipe.scheduler = loaded.default_scheduler
        elapsed = time.perf_counter() - t0
        sched_name = (
            first.scheduler or self.settings.scheduler or type(loaded.default_scheduler).__name__
        )
        made = (
            [first.model_copy(update={"seed": s}) for s in seeds] if seeds is not None else requests
        )
        results = []
        for r, image in zip(made, images, strict=True):
            ref = self.store.put_image(
                image,
                {
                    "prompt": r.prompt,
                    "negative_prompt": r.negative_prompt,
                    "seed": r.seed,
                    "model": model,
                    "mode": r.mode,
                    "steps": steps,
                    "scheduled_steps": kwargs["num_inference_steps"],
                    "guidance_scale": guidance,
                    "scheduler": sched_name,
                    "strength": r.strength if r.mode != "text2img" else None,
                    "init_image": r.init_image,
                    "mask_image": r.mask_image,
                    "reference_images": r.reference_images,
                    "references_used": sum(u.used for u in references),
                    "references": [u.model_dump() for u in references],
                    "layout": r.layout.model_dump() if r.layout is not None else None,
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
                    references=references,
                )
            )
        return results

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                self._loaded = None

        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(close)
