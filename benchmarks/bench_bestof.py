"""Best-of-N as one batched pipeline call against N single runs.

The critique loop may ask for N candidates of one prompt and keep the best; `generate_many`
makes them in one `num_images_per_prompt` call (one torch.Generator per seed). This measures,
in interleaved rounds so a busy machine slows both alike: one single run, N single runs in a
row, and the one batched call; it prints medians and the batch's cost in single runs (below N
means batching pays).

  python -m benchmarks.bench_bestof [--quick] [--n 4] [--size 64] [--steps 4] [--model PATH]

Default model: the tiny random-init pipeline built on the fly (CPU, noise images); pass a real
one with --model (and --device cuda) for GPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest
from generators.diffusers_backend import DiffusersGenerator
from generators.settings import GeneratorSettings


async def run(args: argparse.Namespace, model: str, root: Path) -> None:
    import torch

    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    settings = GeneratorSettings(
        model=model,
        device=args.device,
        steps=args.steps,
        guidance_scale=args.guidance,
        width=args.size,
        height=args.size,
        max_batch_size=max(args.n, 1),
    )
    gen = DiffusersGenerator(settings, ArtifactStore(root / "artifacts"))
    request = GenerationRequest(prompt="a red kangaroo in Milan", width=args.size, height=args.size)
    try:
        await gen.warm(wait=True)
        await gen.generate(request)  # first-call costs (allocator, kernels) out of the way
        one: list[float] = []
        seq: list[float] = []
        batch: list[float] = []
        for r in range(args.rounds):
            seeds = [r * 1000 + i for i in range(args.n)]
            t0 = time.perf_counter()
            await gen.generate(request.model_copy(update={"seed": seeds[0]}))
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in seeds:
                await gen.generate(request.model_copy(update={"seed": s}))
            seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results = await gen.generate_many(request, seeds)
            batch.append(time.perf_counter() - t0)
            assert [x.seed for x in results] == seeds
    finally:
        await gen.aclose()
    m_one, m_seq, m_batch = (statistics.median(v) for v in (one, seq, batch))
    print(
        f"model {model} on {args.device}, {args.size}x{args.size}, {args.steps} steps, "
        f"{args.rounds} rounds (medians)"
    )
    print(f"one run:                 {m_one * 1000:8.1f} ms")
    print(f"{args.n} single runs in a row: {m_seq * 1000:8.1f} ms")
    print(f"best-of-{args.n}, one batch:     {m_batch * 1000:8.1f} ms")
    print(
        f"batch = {m_batch / m_one:.2f}x one run (N = {args.n}); "
        f"{m_seq / m_batch:.2f}x faster than {args.n} sequential runs"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--n", type=int, default=4, help="candidates per prompt")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--model", default=None, help="pipeline folder or hub id (default: tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from tests.support.tiny_pipeline import build_tiny_pipeline

            model = str(build_tiny_pipeline(root / "tiny"))
        asyncio.run(run(args, model, root))


if __name__ == "__main__":
    main()
