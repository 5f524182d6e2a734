"""A tuned generator in the A/B harness: the eval's base model + a LoRA from `groundwork tune
feedback|curate`, behind any policy.

The question "plain agent vs tuned generator vs both" needs the LoRA to be the *only* change:
same base model, prompts, seeds, tools. So the tuned folder must name the eval's own
`generator.model` as its base, and the arm reaches the eval's shared generator through a thin
wrapper that points each request at the tuned folder (`request.model = folder`): the diffusers
backend loads the LoRA onto the resident base (switching adapters, no reload), a queue worker
does the same, and the queue's cache keys differ from the base model's.

Two spellings, one mechanism: `kind = "tuned-generator"` (with `policy` = plain, rewrite,
planned or react), or `generator_lora = "..."` on any other arm (e.g. a tuned-policy arm with
a tuned generator: "both").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core.errors import InputError
from generators.base import GenerationRequest, GenerationResult, ProgressCallback
from generators.diffusers_backend import LORA_MANIFEST

if TYPE_CHECKING:
    from agent.settings import Settings
    from evals.config import ArmConfig
    from evals.services import SharedServices
    from evals.suites import Suite
    from generators.base import Generator


def check_tuned_folder(folder: str, settings: Settings, *, arm: str) -> str:
    """The tuned folder as an absolute path; an error unless its base is the eval's model."""
    path = Path(folder).expanduser().resolve()
    manifest = path / LORA_MANIFEST
    if not manifest.is_file():
        raise InputError(
            f"arm {arm}: {path} is not a tuned generator folder (no {LORA_MANIFEST}); fix: "
            "point it at the out_dir of `groundwork tune feedback` or a student/vNNN folder of "
            "`groundwork tune curate`"
        )
    try:
        base = str(json.loads(manifest.read_text(encoding="utf-8"))["base_model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"arm {arm}: {manifest} is unreadable ({exc})") from exc
    if not _same_model(base, settings.generator.model):
        raise InputError(
            f"arm {arm}: the tuned generator {path} was trained on {base!r} but the eval's "
            f"generator is {settings.generator.model!r}; the comparison would change two things "
            "at once; fix: set [settings] generator.model to its base model"
        )
    return str(path)


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class TunedGenerator:
    """The shared generator with every request for the base model sent to the tuned folder."""

    def __init__(self, inner: Generator, folder: str, base_model: str) -> None:
        self.inner = inner
        self.folder = folder
        self.base_model = base_model

    def _pin(self, request: GenerationRequest) -> GenerationRequest:
        if request.model is None or _same_model(request.model, self.base_model):
            return request.model_copy(update={"model": self.folder})
        return request

    async def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None, **kw: Any
    ) -> GenerationResult:
        return await self.inner.generate(self._pin(request), on_progress, **kw)

    @property
    def default_model(self) -> str:
        return self.folder

    async def capabilities(self, model: str | None = None) -> Any:
        """What the base model can do (a LoRA changes the pixels, not the capabilities)."""
        from generators.capabilities import capabilities

        return await capabilities(self.inner, model or self.base_model)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "generate_many":

            async def many(
                request: GenerationRequest, seeds: Sequence[int], *args: Any, **kw: Any
            ) -> list[GenerationResult]:
                return cast(
                    list[GenerationResult], await attr(self._pin(request), seeds, *args, **kw)
                )

            return many
        if name == "generate_batch":

            async def batch(
                requests: Sequence[GenerationRequest], *args: Any, **kw: Any
            ) -> list[GenerationResult]:
                pinned = [self._pin(r) for r in requests]
                return cast(list[GenerationResult], await attr(pinned, *args, **kw))

            return batch
        if name == "warm":

            async def warm(model: str | None = None, **kw: Any) -> None:
                await attr(model or self.folder, **kw)

            return warm
        return attr

    async def aclose(self) -> None:
        """The shared generator belongs to the eval; it closes it."""
        return None


class TunedSharedServices:
    """The eval's shared services, with the tuned generator in place of the shared one."""

    def __init__(self, shared: SharedServices, folder: str, base_model: str) -> None:
        self._shared = shared
        self._generator = TunedGenerator(shared.generator(), folder, base_model)

    def generator(self) -> TunedGenerator:
        return self._generator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)


def with_generator_lora(
    shared: SharedServices, folder: str, settings: Settings, *, arm: str
) -> SharedServices:
    """`shared` as an arm with a tuned generator sees it (checked for fairness first)."""
    path = check_tuned_folder(folder, settings, arm=arm)
    return cast("SharedServices", TunedSharedServices(shared, path, settings.generator.model))


def build_tuned(
    config: ArmConfig,
    base: Settings,
    shared: SharedServices,
    checkpointer: Any,
    suites: list[Suite],
    seeds: list[int],
    build: Callable[..., Any],
) -> Any:
    """The arm `config` describes, with the tuned generator in its services; `build` is
    `evals.dispatch.build_arm` (passed in: the dispatch module imports this one)."""
    from evals.config import AgentArm, ImportedArm, PlainArm, RewriteArm, TunedGeneratorArm

    if isinstance(config, ImportedArm):
        raise InputError(
            f"arm {config.name}: generator_lora on an imported arm changes nothing (its images "
            "were made elsewhere); fix: remove it"
        )
    folder = config.lora if isinstance(config, TunedGeneratorArm) else config.generator_lora
    assert folder is not None
    tuned = with_generator_lora(shared, folder, base, arm=config.name)
    inner: Any
    if isinstance(config, TunedGeneratorArm):
        name, overrides = config.name, config.settings
        if config.policy == "plain":
            inner = PlainArm(name=name, settings=overrides)
        elif config.policy == "rewrite":
            inner = RewriteArm(name=name, settings=overrides)
        else:
            inner = AgentArm(name=name, settings=overrides, policy=config.policy)
    else:
        inner = config.model_copy(update={"generator_lora": None})
    arm = build(inner, base, tuned, checkpointer, suites, seeds)
    if isinstance(config, TunedGeneratorArm):
        arm.kind = config.kind
    return arm
