"""Generator and queue configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class GeneratorSettings(BaseModel):
    model: str = Field(
        default="stabilityai/sd-turbo",
        description="Diffusers model id on the Hugging Face hub, or a local pipeline folder.",
    )
    backend: str = Field(
        default="inprocess",
        description="A name of generators.factory.BACKENDS. inprocess (alias diffusers): load "
        "the pipeline in this process; queue: send jobs to `groundwork worker` processes "
        "through Redis Streams; noop: flat images, no model (tests, benchmarks).",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: float16 on CUDA (bfloat16 if supported), float32 on CPU."
    )
    steps: int = Field(default=2, ge=1, le=200, description="Denoising steps (sd-turbo: 1-4).")
    guidance_scale: float = Field(default=0.0, ge=0.0, description="CFG scale (sd-turbo: 0).")
    width: int = Field(default=512, ge=64, le=2048, description="Output width in pixels.")
    height: int = Field(default=512, ge=64, le=2048, description="Output height in pixels.")
    seed: int = Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        description="Seed for the first image; edits reuse it (torch accepts 0..2**63-1).",
    )
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
        description="IP-Adapter for reference images: 'auto' (h94/IP-Adapter weights that fit "
        "the model family), a repo id or a folder. None = reference images are not used.",
    )
    ip_adapter_subfolder: str | None = Field(
        default=None, description="Subfolder of ip_adapter; None = the model family's default."
    )
    ip_adapter_weight_name: str | None = Field(
        default=None, description="Weights file in the subfolder; None = the family's default."
    )
    ip_adapter_scale: float = Field(
        default=0.6, ge=0.0, le=2.0, description="How strongly reference images steer the image."
    )

    @field_validator("backend")
    @classmethod
    def _norm_backend(cls, v: str) -> str:
        """Names are looked up in generators.factory.BACKENDS when the generator is made
        (this module cannot import the registry: the registry imports these settings)."""
        v = v.strip().lower()
        if not v:
            raise ValueError("backend is empty; use inprocess, queue or noop")
        return v

    @field_validator("size_buckets")
    @classmethod
    def _check_buckets(cls, v: list[str]) -> list[str]:
        for b in v:
            w, sep, h = b.lower().partition("x")
            if not (sep and w.isdigit() and h.isdigit() and int(w) >= 8 and int(h) >= 8):
                raise ValueError(f'size bucket {b!r} is not "WIDTHxHEIGHT", e.g. "512x512"')
        return [b.lower() for b in v]


class QueueSettings(BaseModel):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for jobs.")
    stream: str = Field(default="groundwork:jobs", description="Job stream name.")
    group: str = Field(default="groundwork-workers", description="Consumer group name.")
    dead_letter_stream: str = Field(default="groundwork:jobs:dead", description="Poison jobs.")
    visibility_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds without a heartbeat after which a worker's job is given to another "
        "worker. None = per job: min_visibility_s plus twice the job's expected run time (its "
        "steps and size at the step time the worker measured). A live worker's heartbeat "
        "keeps extending it, however long the job runs.",
    )
    min_visibility_s: float = Field(
        default=10.0, gt=0, description="Floor of the per-job visibility timeout."
    )
    step_time_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds per denoising step of a 512x512 image assumed until a worker has "
        "measured its own (then it uses the measurement).",
    )
    heartbeat_s: float = Field(
        default=2.0, gt=0, description="How often a worker renews its jobs and liveness."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Tries before dead-lettering a job whose generation raised. Errors that "
        "cannot succeed on retry (unknown model, missing input image) dead-letter at once; a "
        "worker dying mid-job does not count (see max_worker_deaths).",
    )
    max_worker_deaths: int = Field(
        default=5,
        ge=1,
        description="Workers a job may see die under it (killed, OOM, crash) while it ran alone "
        "before it is dead-lettered as a poison job. A batch whose worker died is split and "
        "its jobs rerun alone, so one crash never charges several jobs.",
    )
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
    reconnect_s: float = Field(
        default=3.0,
        ge=0,
        description="How long one Redis call keeps reconnecting (Redis restarting) before it "
        "fails; pooled connections are also health-checked when idle.",
    )
    outage_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a waiting client, or a worker storing a result, rides out a Redis "
        "outage before giving up (the worker's read loop itself waits for Redis forever).",
    )
