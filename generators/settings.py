"""Generator and queue configuration (a section of `agent.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


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
