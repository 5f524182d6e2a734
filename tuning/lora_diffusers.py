"""LoRA on a diffusers UNet, the part both generator trainers share (feedback and curate).

Why a module of its own: the Dual-Process trainer needs images made *with gradients* through
the sampling steps, the EvolveDirector trainer needs the standard denoising loss, and both
need the same loading, LoRA set-up, mixed precision and on-disk format. The format is a
"tuned folder" (`groundwork_lora.json` + diffusers LoRA weights) that the generator backend
accepts as a model: `generator.model = "tune-out/blue"` loads the base model the manifest
names and the LoRA on top, so the eval harness, the worker fleet and `groundwork run` use a
tuned generator with no other setting, and the queue's cache keys differ from the base's.

torch/diffusers/peft are imported inside functions: importing `tuning` stays cheap.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.device import resolve_device, resolve_dtype
from core.errors import GroundworkError
from generators.diffusers_backend import LORA_MANIFEST, LORA_WEIGHTS, _dtype_kwarg, resolve_model

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class TuningError(GroundworkError):
    """A generator tuning run cannot go on (bad model, incompatible pipeline, broken checkpoint)."""


@dataclass
class Precision:
    """What runs in which dtype: frozen weights in `weights`, LoRA and optimizer in float32,
    the forward under autocast on CUDA (fp16 also needs a loss scaler)."""

    device: str
    weights: torch.dtype
    autocast: bool

    @contextmanager
    def context(self) -> Iterator[None]:
        import torch

        if self.autocast:
            with torch.autocast(device_type=self.device.split(":")[0], dtype=self.weights):
                yield
        else:
            yield


def precision(device_setting: str, mixed: str) -> Precision:
    """mixed = auto (bf16/fp16 on CUDA, fp32 elsewhere), no, fp16 or bf16."""
    import torch

    device = resolve_device(device_setting, what="tuning")
    if mixed == "no":
        return Precision(device, torch.float32, False)
    if mixed == "auto":
        dtype = resolve_dtype("auto", device)
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed]
    if not device.startswith("cuda") or dtype == torch.float32:
        return Precision(device, torch.float32, False)
    return Precision(device, dtype, True)


def load_pipeline(model: str, prec: Precision, *, local_files_only: bool = False) -> Any:
    """The base pipeline, frozen, on the device. Same resolution and errors as the generator."""
    from diffusers import DiffusionPipeline

    resolved = resolve_model(model, local_files_only=local_files_only)
    if resolved.lora is not None:
        raise TuningError(
            f"{model} is already a tuned folder (LoRA over {resolved.model}); fix: train from "
            "its base model (the manifest's base_model) instead"
        )
    source = resolved.location if resolved.source == "folder" else model
    try:
        pipe: Any = DiffusionPipeline.from_pretrained(
            source, local_files_only=resolved.source != "hub", **_dtype_kwarg(prec.weights)
        )
    except (OSError, ValueError) as e:
        raise TuningError(f"could not load {model!r} for tuning: {e}") from e
    if getattr(pipe, "unet", None) is None or not hasattr(pipe, "encode_prompt"):
        raise TuningError(
            f"{model!r} is a {type(pipe).__name__}; generator tuning needs a UNet "
            "text-to-image pipeline (Stable Diffusion 1.x/2.x family, e.g. stabilityai/sd-turbo)"
        )
    if getattr(pipe.unet.config, "addition_embed_type", None) is not None:
        raise TuningError(
            f"{model!r} needs added conditioning (SDXL family); generator tuning supports the "
            "SD 1.x/2.x family (sd-turbo, SD 1.5, SD 2.1) for now"
        )
    pipe = pipe.to(prec.device)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    return pipe


def add_lora(
    pipe: Any, *, rank: int, alpha: float, targets: Sequence[str], seed: int
) -> list[torch.nn.Parameter]:
    """A fresh LoRA adapter on the UNet (B = 0, so the first images equal the base model's);
    returns its parameters in float32 (trainable under mixed precision)."""
    import torch
    from peft import LoraConfig

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft reads it as a float scale
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )
    try:
        pipe.unet.add_adapter(config)
    except ValueError as e:
        raise TuningError(
            f"LoRA targets {list(targets)} not found in the UNet ({e}); fix: [lora] targets"
        ) from e
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if not params:
        raise TuningError(f"LoRA targets {list(targets)} matched no UNet layer; fix: [lora]")
    return params


def lora_state(unet: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's naming (checkpoints)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def set_lora_state(unet: Any, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise TuningError(
            f"checkpoint LoRA does not fit this UNet ({len(unexpected)} unexpected keys such as "
            f"{unexpected[0]}); fix: resume with the same model and [lora] settings, or start "
            "a new out_dir"
        )


def save_tuned_folder(pipe: Any, folder: Path, base_model: str, meta: dict[str, Any]) -> Path:
    """The LoRA in diffusers' format + the manifest the generator backend reads."""
    from peft.utils import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    # peft's key names: diffusers' loaders read them as they are (its old-format conversion
    # mislabels a mix of attention and conv LoRA layers).
    layers = get_peft_model_state_dict(pipe.unet)
    layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHTS)
    manifest = {
        "format": "groundwork-lora/1",
        "base_model": base_model,
        "weight_name": LORA_WEIGHTS,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
    }
    tmp = folder / (LORA_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(folder / LORA_MANIFEST)
    return folder


def encode(pipe: Any, prompts: Sequence[str], guidance: float) -> tuple[Any, Any]:
    """Text embeddings (no gradient: the text encoder is frozen)."""
    import torch

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            list(prompts), pipe.device, 1, guidance > 1.0, negative_prompt=None
        )
    return cond, uncond


def initial_latents(pipe: Any, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """One CPU generator per seed: the same seed gives the same noise on any device/batch."""
    import torch

    factor = int(getattr(pipe, "vae_scale_factor", 8))
    channels = int(pipe.unet.config.in_channels)
    noise = [
        torch.randn(
            (channels, height // factor, width // factor),
            generator=torch.Generator("cpu").manual_seed(int(s)),
        )
        for s in seeds
    ]
    return torch.stack(noise).to(pipe.device)


def sample(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    height: int,
    width: int,
    prec: Precision,
    checkpointing: bool = False,
) -> torch.Tensor:
    """Images in [0, 1], shape [B, 3, H, W], made with autograd on: gradients reach the LoRA
    through every sampling step and the VAE decoder (run under torch.no_grad() for
    evaluation). `checkpointing` recomputes each UNet call in the backward pass."""
    import torch
    from torch.utils.checkpoint import checkpoint

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=pipe.device)
    cond, uncond = encode(pipe, prompts, guidance)
    embeds = torch.cat([uncond, cond]) if guidance > 1.0 else cond
    latents = initial_latents(pipe, seeds, height, width) * scheduler.init_noise_sigma
    unet = pipe.unet

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with prec.context():
            out: torch.Tensor = unet(x.to(prec.weights), t, encoder_hidden_states=embeds).sample
        return out.float()

    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guidance > 1.0 else latents
        x = scheduler.scale_model_input(x, t)
        if checkpointing and torch.is_grad_enabled():
            eps = checkpoint(denoise, x, t, use_reentrant=False)
        else:
            eps = denoise(x, t)
        if guidance > 1.0:
            e_u, e_c = eps.chunk(2)
            eps = e_u + guidance * (e_c - e_u)
        latents = scheduler.step(eps, t, latents).prev_sample
    return decode(pipe, latents, prec, checkpointing=checkpointing)


def decode(pipe: Any, latents: torch.Tensor, prec: Precision, *, checkpointing: bool) -> Any:
    import torch
    from torch.utils.checkpoint import checkpoint

    vae = pipe.vae
    scale = float(vae.config.scaling_factor)

    def run(z: torch.Tensor) -> torch.Tensor:
        with prec.context():
            out: torch.Tensor = vae.decode(z.to(prec.weights) / scale).sample
        return out.float()

    if checkpointing and torch.is_grad_enabled():
        images = checkpoint(run, latents, use_reentrant=False)
    else:
        images = run(latents)
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def denoising_loss(
    pipe: Any, images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], prec: Precision
) -> torch.Tensor:
    """The standard diffusion training loss on (image, prompt) pairs: noise the VAE latents at
    a random timestep and regress the scheduler's target (epsilon or v)."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    scheduler = pipe.scheduler
    with torch.no_grad(), prec.context():
        latents = pipe.vae.encode(images.to(prec.weights) * 2.0 - 1.0).latent_dist.sample()
        latents = latents.float() * float(pipe.vae.config.scaling_factor)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(
        latents.device
    )
    total = int(scheduler.config.num_train_timesteps)
    t = torch.tensor([int(torch.randint(0, total, (1,), generator=g)) for g in gens]).to(
        latents.device
    )
    noisy = scheduler.add_noise(latents, noise, t)
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    target = scheduler.get_velocity(latents, noise, t) if kind == "v_prediction" else noise
    cond, _ = encode(pipe, prompts, 0.0)
    with prec.context():
        pred = pipe.unet(noisy.to(prec.weights), t, encoder_hidden_states=cond).sample
    return F.mse_loss(pred.float(), target.float())


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy()) for a in arr]


def from_pil(images: Sequence[Image.Image], height: int, width: int, device: str) -> Any:
    """PIL images -> [B, 3, H, W] in [0, 1] at the training size."""
    import numpy as np
    import torch

    arrays = [
        np.asarray(im.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)


def grid(rows: Sequence[Sequence[Image.Image]], cell: int = 128) -> Image.Image:
    """Images in rows (e.g. prompts x seeds) as one picture."""
    from PIL import Image

    n_rows = max(1, len(rows))
    n_cols = max([len(r) for r in rows] + [1])
    out = Image.new("RGB", (n_cols * cell, n_rows * cell), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            out.paste(im.resize((cell, cell)), (j * cell, i * cell))
    return out


@dataclass
class StepMeter:
    """Time per step and peak memory (GPU: allocated by torch; CPU: the process's peak RSS)."""

    device: str
    busy: float = 0.0
    steps: int = 0
    _t0: float | None = None

    def __post_init__(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()

    def start(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def tick(self) -> None:
        """One training step done (since `start()`): evaluation and saving are not counted."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        if self._t0 is not None:
            self.busy += time.perf_counter() - self._t0
            self._t0 = None
        self.steps += 1

    def s_per_step(self) -> float:
        return self.busy / max(1, self.steps)

    def peak_memory_gib(self) -> float:
        if self.device.startswith("cuda"):
            import torch

            return float(torch.cuda.max_memory_allocated()) / 2**30
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss / (2**30 if sys.platform == "darwin" else 2**20)

    def memory_label(self) -> str:
        return "GPU peak" if self.device.startswith("cuda") else "process peak RSS"


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
