"""The one registry of generator backends, used by `make_generator` and by the worker CLI.

The graph's generate node only sees `Generator`; which class stands behind it is a name
(`GROUNDWORK_GENERATOR__BACKEND` for the agent, `groundwork worker --backend` for a worker)
looked up here. Adding a backend is its module plus one `Backend(...)` entry below: settings,
the worker CLI and the contract tests (tests/generators/test_gen_contract.py) iterate BACKENDS.

Builders import their class inside the function: choosing the queue never imports torch in the
agent process, and importing this module costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.artifacts import ArtifactStore
from core.imports import heavy_imports
from generators.base import Generator, GeneratorError, JobGenerator
from generators.settings import GeneratorSettings, QueueSettings


@dataclass(frozen=True)
class BackendContext:
    """What a builder gets: the settings, the shared artifact store and free-form options
    (`worker`: True inside a queue worker; `noop_delay_s`: the noop backend's fake GPU time)."""

    generator: GeneratorSettings
    queue: QueueSettings
    store: ArtifactStore
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    name: str
    build: Callable[[BackendContext], Generator]
    help: str
    serves_jobs: bool = True
    """A queue worker can run it (its `generate` takes `should_cancel`, see JobGenerator)."""
    aliases: tuple[str, ...] = ()


def _diffusers(ctx: BackendContext) -> Generator:
    from generators.diffusers_backend import DiffusersGenerator

    if ctx.options.get("worker"):
        heavy_imports("diffusers")
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # progress goes to the job's event stream
    return DiffusersGenerator(ctx.generator, ctx.store)


def _queue(ctx: BackendContext) -> Generator:
    from generators.queue.client import QueueGenerator

    return QueueGenerator(ctx.queue, ctx.store, default_model=ctx.generator.model)


def _noop(ctx: BackendContext) -> Generator:
    from generators.noop import NoopGenerator

    delay = float(ctx.options.get("noop_delay_s", 0.0))
    return NoopGenerator(ctx.store, delay_s=delay, steps=ctx.generator.steps)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "inprocess",
            _diffusers,
            "a resident diffusers pipeline in this process",
            aliases=("diffusers",),
        ),
        Backend(
            "queue",
            _queue,
            "jobs over Redis Streams to `groundwork worker` processes",
            serves_jobs=False,
        ),
        Backend("noop", _noop, "flat images, no model (queue tests and benchmarks)"),
    )
}


def find_backend(name: str) -> Backend:
    """The backend registered under `name` (or one of its aliases)."""
    key = name.strip().lower()
    for b in BACKENDS.values():
        if key == b.name or key in b.aliases:
            return b
    known = ", ".join(n for b in BACKENDS.values() for n in (b.name, *b.aliases))
    raise GeneratorError(
        f"unknown generator backend {name!r}; fix: use one of {known} "
        "(GROUNDWORK_GENERATOR__BACKEND, or `groundwork worker --backend`)"
    )


def job_backend_names() -> list[str]:
    """Names a queue worker accepts for `--backend` (aliases included)."""
    return [n for b in BACKENDS.values() if b.serves_jobs for n in (*b.aliases, b.name)]


def make_generator(
    generator: GeneratorSettings,
    queue: QueueSettings,
    store: ArtifactStore,
    *,
    backend: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Generator:
    """The generator `backend` (None = `generator.backend`) names, built from the settings."""
    spec = find_backend(backend or generator.backend)
    return spec.build(BackendContext(generator, queue, store, options or {}))


def build_job_generator(
    backend: str,
    generator: GeneratorSettings,
    queue: QueueSettings,
    store: ArtifactStore,
    *,
    options: Mapping[str, Any] | None = None,
) -> JobGenerator:
    """The generator a queue worker serves jobs with (a backend that can run jobs itself)."""
    spec = find_backend(backend)
    if not spec.serves_jobs:
        raise GeneratorError(
            f"backend {spec.name!r} cannot serve queue jobs (it would send them to another "
            f"queue); fix: run the worker with --backend {' or '.join(job_backend_names())}"
        )
    gen = spec.build(BackendContext(generator, queue, store, options or {}))
    if not (
        isinstance(gen, JobGenerator)
        and "should_cancel" in inspect.signature(gen.generate).parameters
    ):
        raise GeneratorError(
            f"backend {spec.name!r} builds {type(gen).__name__}, whose generate() takes no "
            "should_cancel, so a worker cannot stop its jobs; fix: add that keyword"
        )
    return gen
