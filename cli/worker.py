"""`groundwork worker`: the CLI face of generators.worker (registered by the agent's CLI).

Flags override the environment (GROUNDWORK_GENERATOR__*, GROUNDWORK_QUEUE__*,
GROUNDWORK_ARTIFACTS__*), which overrides `.env` and the defaults.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import typer


def worker(
    model: Annotated[
        str | None, typer.Option(help="Diffusers hub id or local pipeline folder.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Jobs handled at once by this process.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Compatible text-to-image jobs run as one pipeline call."),
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis holding the job stream.")] = None,
    stream: Annotated[str | None, typer.Option(help="Job stream name.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group name.")] = None,
    dead_letter_stream: Annotated[
        str | None, typer.Option(help="Stream receiving jobs that failed max-attempts times.")
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name (default: host-pid-random).")
    ] = None,
    visibility_timeout: Annotated[
        float | None, typer.Option(help="Seconds before a silent worker's job is reclaimed.")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, help="Tries before a job is dead-lettered.")
    ] = None,
    shutdown_grace: Annotated[
        float | None, typer.Option(help="Seconds a job may finish after SIGTERM.")
    ] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="Artifact store folder (shared with the agent).")
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the model, then warm up."),
    ] = None,
    warmup: Annotated[
        bool | None, typer.Option("--warmup/--no-warmup", help="Make one image at start.")
    ] = None,
    local_files_only: Annotated[
        bool | None,
        typer.Option("--local-files-only/--allow-download", help="Never contact the hub."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="diffusers, or noop (flat images; queue tests and benchmarks).")
    ] = "diffusers",
    noop_delay: Annotated[
        float, typer.Option(help="noop backend: seconds each job pretends to take.")
    ] = 0.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Run a generation worker: serve jobs from the Redis stream until SIGTERM/SIGINT."""
    from cli.common import load_settings
    from generators.base import GeneratorError
    from generators.worker import run_worker

    if backend not in ("diffusers", "noop"):
        raise typer.BadParameter(f"unknown backend {backend!r}: use diffusers or noop")
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides: dict[str, Any] = {
        "generator": {
            "model": model,
            "device": device,
            "dtype": dtype,
            "max_batch_size": batch_size,
            "compile": compile,
            "warmup": warmup,
            "local_files_only": local_files_only,
        },
        "queue": {
            "redis_url": redis_url,
            "stream": stream,
            "group": group,
            "dead_letter_stream": dead_letter_stream,
            "concurrency": concurrency,
            "visibility_timeout_s": visibility_timeout,
            "max_attempts": max_attempts,
            "shutdown_grace_s": shutdown_grace,
        },
        "artifacts": {"root": artifacts},
    }
    settings = load_settings(overrides)
    try:
        asyncio.run(
            run_worker(
                settings.generator,
                settings.queue,
                settings.artifacts,
                backend="noop" if backend == "noop" else "diffusers",
                consumer=consumer,
                noop_delay_s=noop_delay,
            )
        )
    except GeneratorError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
