"""Generator and queue configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class GeneratorSettings(BaseModel):
    model: str = Field(
        default="stabilityai/sd-turbo",
        description="Diffusers model id on the Hugging Face hub, or a local pipeline folder.",
    )
    backend: Literal["inprocess", "queue"] = Field(
        default="inprocess",
        description="inprocess: load the pipeline in this process; queue: send jobs to "
        "`groundwork worker` processes through Redis Streams.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: float16 on CUDA (bfloat16 if supported), float32 on CPU."
    )
    steps: int = Field(default=2, ge=1, le=200, description="Denoising steps (sd-turbo: 1-4).")
    guidance_scale: float = Field(default=0.0, ge=0.0, description="CFG scale (sd-turbo: 0).")
    width: int = Field(default=512, ge=64, le=2048, description="Output width in pixels.")
    height: int = Field(default=512, ge=64, le=2048, description="Output height in pixels.")
    seed: int = Field(default=0, description="Seed for the first image; edits reuse it.")
    edit_strength: float = Field(
        default=0.5, ge=0.05, le=1.0, description="img2img strength for critique fix rounds."
    )
    local_files_only: bool = Field(
        default=False, description="Never contact the hub; only local folders and the HF cache."
    )
    scheduler: str | None = Field(
        default=None,
        description="Sampler: ddim, euler, euler_a, dpm++, dpm++_karras, unipc, lcm, pndm, heun, "
        "or a diffusers scheduler class name. None = the model's own.",
    )
    size_buckets: list[str] = Field(
        default_factory=list,
        description='Allowed output sizes as "WIDTHxHEIGHT" (e.g. ["512x512", "768x512"]); a '
        "request snaps to the bucket nearest its aspect ratio, then area. Empty = any size, "
        "rounded down to a multiple of 8.",
    )
    max_batch_size: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Requests sharing model, size, steps, guidance and scheduler that a worker "
        "runs as one batched pipeline call.",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the UNet/transformer at load, then run a warm-up image so "
        "the first real request does not pay the compile time.",
    )
    compile_mode: str = Field(
        default="max-autotune-no-cudagraphs",
        description="torch.compile mode (default, reduce-overhead, max-autotune, ...).",
    )
    warmup: bool = Field(
        default=False,
        description="Run one small generation right after loading (always on with compile).",
    )
    ip_adapter: str | None = Field(
        default=None,
        description="IP-Adapter repo id or folder (e.g. h94/IP-Adapter) used for reference "
        "images. None = reference images are not used by the generator.",
    )
    ip_adapter_subfolder: str = Field(default="models", description="Subfolder of ip_adapter.")
    ip_adapter_weight_name: str = Field(
        default="ip-adapter_sd15.safetensors", description="Weights file inside the subfolder."
    )
    ip_adapter_scale: float = Field(
        default=0.6, ge=0.0, le=2.0, description="How strongly reference images steer the image."
    )

    @field_validator("size_buckets")
    @classmethod
    def _check_buckets(cls, v: list[str]) -> list[str]:
        for b in v:
            w, sep, h = b.lower().partition("x")
            if not (sep and w.isdigit() and h.isdigit() and int(w) >= 8 and int(h) >= 8):
                raise ValueError(f'size bucket {b!r} is not "WIDTHxHEIGHT", e.g. "512x512"')
        return [b.lower() for b in v]


class ArtifactSettings(BaseModel):
    root: Path = Field(
        default=Path(".groundwork/artifacts"),
        description="Folder of the content-addressed artifact store (share it between hosts).",
    )


class QueueSettings(BaseModel):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for jobs.")
    stream: str = Field(default="groundwork:jobs", description="Job stream name.")
    group: str = Field(default="groundwork-workers", description="Consumer group name.")
    dead_letter_stream: str = Field(default="groundwork:jobs:dead", description="Poison jobs.")
    visibility_timeout_s: float = Field(
        default=120.0, gt=0, description="A job unacknowledged this long is reclaimed."
    )
    max_attempts: int = Field(default=3, ge=1, description="Tries before dead-lettering a job.")
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="How long results live.")
    job_timeout_s: float = Field(default=600.0, gt=0, description="Client wait for one job.")
    key_prefix: str = Field(
        default="groundwork",
        description="Prefix of the Redis keys for results, job state, progress and cancel flags.",
    )
    claim_interval_s: float = Field(
        default=5.0, gt=0, description="How often a worker looks for stalled jobs (XAUTOCLAIM)."
    )
    block_ms: int = Field(
        default=1000, ge=10, description="How long one XREADGROUP waits for new jobs."
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Jobs one worker process handles at once (GPU calls still run one at a "
        "time; this overlaps loading inputs and storing results).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long a worker lets its current job finish before it stops "
        "it and puts it back on the queue for another worker.",
    )
    max_connections: int = Field(
        default=64,
        ge=4,
        description="Redis connections per process; extra concurrent calls wait for a free one.",
    )
    max_stream_len: int = Field(
        default=100_000, ge=1000, description="Approximate cap on the job stream's length."
    )
