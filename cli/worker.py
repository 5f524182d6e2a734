"""`groundwork worker`: the CLI face of generators.queue.worker (registered by the agent's CLI;
`python -m cli.worker` runs it alone, without importing the rest of the CLI).

Flags override the environment (GROUNDWORK_GENERATOR__*, GROUNDWORK_QUEUE__*,
GROUNDWORK_ARTIFACTS__*), which overrides `.env` and the defaults.

Everything this command prints can carry text from outside: job prompts and model names in
log lines, consumer/stream names and URLs from arguments and settings, error messages quoting
them. Logs are plain text (operators grep them; no Rich markup is interpreted) with control
characters and escape sequences neutralised, and one record stays one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from retrieval.text import clean_text as plain

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class PlainFormatter(logging.Formatter):
    """Log records as inert text: no escape sequence reaches the terminal, and a newline in a
    message (a prompt, an error) cannot forge a second log line."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg = plain(record.getMessage()).replace("\n", "\\n").replace("\t", " ")
        safe.args = None
        if record.exc_info:
            safe.exc_text = plain(self.formatException(record.exc_info))
            safe.exc_info = None
        if record.stack_info:
            safe.stack_info = plain(record.stack_info)
        return super().format(safe)


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (it comes with the `serve` extra): it shaves a good part
    of the event loop's cost per job off a worker serving short jobs. Else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {plain(message)}", err=True)
    return typer.Exit(2)


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
        str | None, typer.Option(help="Stream receiving jobs that failed for good.")
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name (default: host-pid-random).")
    ] = None,
    visibility_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds without a heartbeat before a worker's job goes to another worker "
            "(default: per job, from its steps and size)."
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, help="Tries of a failing job before dead-lettering.")
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
        str,
        typer.Option(
            help="A generator backend that serves jobs (generators.factory.BACKENDS): "
            "diffusers, or noop (flat images; queue tests and benchmarks)."
        ),
    ] = "diffusers",
    noop_delay: Annotated[
        float, typer.Option(help="noop backend: seconds each job pretends to take.")
    ] = 0.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Run a generation worker: serve jobs from the Redis stream until SIGTERM/SIGINT."""
    from pydantic import ValidationError
    from redis.connection import parse_url

    from agent.settings import Settings
    from core.errors import GroundworkError
    from generators.factory import job_backend_names
    from generators.queue.worker import run_worker

    if backend.strip().lower() not in job_backend_names():
        raise _fail(f"unknown backend {backend!r}: use {' or '.join(job_backend_names())}")
    if log_level.upper() not in LOG_LEVELS:
        raise _fail(f"unknown log level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
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
    try:
        settings = Settings().merged(overrides)
        parse_url(settings.queue.redis_url)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise _fail(f"invalid settings ({problems}); check the flags and GROUNDWORK_* env") from e
    except ValueError as e:
        raise _fail(f"invalid Redis URL ({e}); expected redis://host:port/db") from e
    try:
        with asyncio.Runner(loop_factory=_fast_loop()) as runner:
            runner.run(
                run_worker(
                    settings.generator,
                    settings.queue,
                    settings.artifacts,
                    backend=backend,
                    consumer=consumer,
                    noop_delay_s=noop_delay,
                )
            )
    except GroundworkError as e:
        raise _fail(str(e)) from e


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(add_completion=False)
    app.command()(worker)
    app(args=argv, prog_name="python -m cli.worker")


if __name__ == "__main__":
    main()
