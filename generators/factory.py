"""Pick the generator the settings ask for; the graph's generate node only sees `Generator`."""

from __future__ import annotations

from core.artifacts import ArtifactStore
from generators.base import Generator
from generators.settings import GeneratorSettings, QueueSettings


def make_generator(
    generator: GeneratorSettings, queue: QueueSettings, store: ArtifactStore
) -> Generator:
    """inprocess: a resident diffusers pipeline here; queue: jobs to `groundwork worker`s.

    Imports are local so that choosing the queue never imports torch in the agent process.
    """
    if generator.backend == "queue":
        from generators.queue import QueueGenerator

        return QueueGenerator(queue, store, default_model=generator.model)
    from generators.diffusers_backend import DiffusersGenerator

    return DiffusersGenerator(generator, store)
