"""Edits at any steps setting and any strength run at least one denoising step (issue 21.2).

The repair policy (agent/stages/critique.py) picks img2img strengths in [0.30, 0.80] (two
decimals), inpaint at 0.85, and falls back to GROUNDWORK_GENERATOR__EDIT_STRENGTH (0.05-1.0);
sd-turbo's default is 2 steps, where every strength below 0.5 used to leave int(2 * s) = 0
steps and crash. The schedule arithmetic is checked against the pipeline's own get_timesteps
for every strength on a 0.01 grid; real img2img and inpaint runs cover steps 1-4 at the
strengths where the old code broke and the ones the policy picks at its edges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from generators.batching import edit_steps
from generators.diffusers_backend import DiffusersGenerator
from generators.settings import GeneratorSettings

GRID = [round(i / 100, 2) for i in range(0, 101)]
"""Every strength the policy (0.30-0.85) or the settings (0.05-1.0) can give, and 0."""

RUN_STRENGTHS = [0.05, 0.3, 0.49, 0.5, 0.8, 0.85, 1.0]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_schedule_always_leaves_a_step(steps: int) -> None:
    for strength in GRID:
        n = edit_steps(steps, strength)
        assert min(int(n * max(strength, 0.01)), n) >= 1, (steps, strength, n)
        if int(steps * strength) >= 1:
            assert n == steps  # a schedule that works is left alone


async def test_schedule_matches_the_pipelines_own_arithmetic(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """The img2img pipeline's get_timesteps, on the steps edit_steps chose, runs >= 1 step."""
    from diffusers import AutoPipelineForImage2Image

    g = DiffusersGenerator(tiny_settings, store)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        pipe: Any = AutoPipelineForImage2Image.from_pipe(g._loaded.pipe)
        for steps in (1, 2, 3, 4):
            for strength in GRID:
                n = edit_steps(steps, strength)
                pipe.scheduler.set_timesteps(n, device="cpu")
                timesteps, run = pipe.get_timesteps(n, max(strength, 0.01), "cpu")
                assert run >= 1 and len(timesteps) >= 1, (steps, strength, n)
    finally:
        await g.aclose()


def progress_into(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda step, total: seen.append((step, total))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
async def test_edits_run_at_steps_1_to_4(
    mode: str, tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    init = store.put_image(Image.new("RGB", (64, 64), (30, 90, 200)), {"prompt": "init"})
    mask = store.put_image(Image.new("L", (64, 64), 255), {"prompt": "mask"})
    g = DiffusersGenerator(tiny_settings, store)
    try:
        for steps in (1, 2, 3, 4):
            for strength in RUN_STRENGTHS:
                progress: list[tuple[int, int]] = []
                request = GenerationRequest(
                    prompt="fix the roof",
                    mode=mode,  # type: ignore[arg-type]
                    width=64,
                    height=64,
                    steps=steps,
                    strength=strength,
                    init_image=init.sha256,
                    mask_image=mask.sha256 if mode == "inpaint" else None,
                )
                result = await g.generate(request, progress_into(progress))
                assert result.mode == mode and store.exists(result.image.sha256)
                assert progress and progress[-1][0] == progress[-1][1] >= 1, (steps, strength)
                meta = store.meta(result.image.sha256)
                assert meta["steps"] == steps
                assert meta["scheduled_steps"] == edit_steps(steps, strength)
    finally:
        await g.aclose()


async def test_a_resumed_repair_request_still_runs(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    """A resumed run replays the repair request from its checkpoint (JSON): at the default 2
    steps and the policy's lowest strength it makes an image instead of crashing again."""
    init = store.put_image(Image.new("RGB", (64, 64), (90, 30, 20)), {"prompt": "init"})
    saved = GenerationRequest(
        prompt="repair", mode="img2img", width=64, height=64, strength=0.3, init_image=init.sha256
    ).model_dump_json()
    g = DiffusersGenerator(tiny_settings, store)  # steps=2, as the default settings
    try:
        result = await g.generate(GenerationRequest.model_validate_json(saved))
        assert result.steps == 2 and store.exists(result.image.sha256)
    finally:
        await g.aclose()
