"""Size buckets and batch compatibility: pure Python, no torch, shared by backend and worker."""

from __future__ import annotations

from collections.abc import Sequence

from generators.base import GenerationRequest


def parse_bucket(bucket: str) -> tuple[int, int]:
    w, _, h = bucket.lower().partition("x")
    return int(w), int(h)


def snap_size(
    width: int, height: int, buckets: Sequence[str] = (), multiple: int = 8
) -> tuple[int, int]:
    """The size actually generated for a requested one.

    Pipelines need multiples of the VAE factor (8 for SD); compiled models and batching want a
    few fixed shapes, so with buckets configured every request lands on one of them.
    """
    if buckets:
        target = width / height
        area = width * height

        def distance(b: str) -> tuple[float, float]:
            bw, bh = parse_bucket(b)
            return (abs(bw / bh - target), abs(bw * bh - area))

        return parse_bucket(min(buckets, key=distance))
    snapped_w = max(multiple, width - width % multiple)
    snapped_h = max(multiple, height - height % multiple)
    return snapped_w, snapped_h


def batch_key(request: GenerationRequest, default_model: str) -> tuple[object, ...] | None:
    """Requests with the same key can share one batched pipeline call; None = run alone.

    Only text-to-image without reference images batches: img2img/inpaint carry per-request
    images and strength, and IP-Adapter embeddings are per prompt.
    """
    if request.mode != "text2img" or request.reference_images:
        return None
    return (
        request.model or default_model,
        request.width,
        request.height,
        request.steps,
        request.guidance_scale,
        request.scheduler,
    )


MIN_EDIT_STRENGTH = 0.01
"""An edit at strength 0 would change nothing and leave no step to run; it runs as this."""


def edit_steps(steps: int, strength: float) -> int:
    """`num_inference_steps` for an img2img/inpaint call that runs at least one denoising step.

    diffusers' SD-style edit pipelines run the last int(n * strength) steps of an n-step
    schedule, so sd-turbo's 2 steps at any strength below 0.5 ran none and crashed ("cannot
    reshape tensor of 0 elements", issue 21.2). When `steps` leaves no step, the schedule is
    lengthened to the shortest one that leaves exactly one: the noise level stays what
    `strength` asks, and the work stays one step. Any `steps` >= 1, any strength in [0, 1].
    """
    strength = min(1.0, max(MIN_EDIT_STRENGTH, strength))
    n = max(1, steps)
    while min(int(n * strength), n) < 1:  # diffusers' own expression (get_timesteps)
        n += 1
    return n
