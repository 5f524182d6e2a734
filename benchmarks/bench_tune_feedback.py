"""Dual-Process feedback tuning on CPU: training speed and peak memory with tiny models.

    python -m benchmarks.run tune-feedback            # 30 steps per setting, 64x64 images
    python -m benchmarks.run tune-feedback --quick    # 6 steps per setting, 32x32 images

Settings, each a fresh run of `tuning.feedback.FeedbackTrainer` on the tiny random-init SD
pipeline (tests/support/tiny_pipeline.py, 2 sampling steps with gradients through both):
the cheap judge (tiny open_clip), the VLM judge (tiny LLaVA built from config, a real
yes-token logit), and the CLIP judge with gradient checkpointing. Printed per setting:
steps/s, s/step, peak memory (process peak RSS on CPU; GPU peak allocated on CUDA) and the
held-out p(yes) before and after. The models are random, so p(yes) only shows the gradient
path works; speed on GPU with sd-turbo and a real VLM is in docs/tuning.md (estimates).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"]


def _run(name: str, base: dict[str, Any], judge: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from tuning.feedback import FeedbackConfig, FeedbackTask, FeedbackTrainer

    config = FeedbackConfig.model_validate({**base, "judge": judge, **extra})
    assert isinstance(config.task, FeedbackTask)
    trainer = FeedbackTrainer(config, config.task)
    started = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - started
    return {
        "setting": name,
        "steps": result.steps,
        "steps_per_s": 1.0 / result.s_per_step if result.s_per_step else 0.0,
        "s_per_step": result.s_per_step,
        "peak_gib": result.peak_memory_gib,
        "memory": result.memory_label,
        "p_before": result.before["p_yes"],
        "p_after": result.after["p_yes"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_tune_feedback", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 30)
    size = 32 if args.quick else 64

    from tests.support.tiny_clip import register_tiny_clip
    from tests.support.tiny_pipeline import build_tiny_pipeline
    from tests.support.tiny_vlm import build_tiny_vlm
    from tuning.feedback import FeedbackTask
    from tuning.feedback_judge import Question

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        pipe = build_tiny_pipeline(tmp / "pipe")
        clip = register_tiny_clip(tmp / "clip")
        vlm = build_tiny_vlm(tmp / "vlm")
        task = FeedbackTask(
            prompts=["a red house", "a dog", "a tree"],
            heldout_prompts=["a car"],
            questions=[Question(text="Is the image blue ?", yes="a blue image", no="a red image")],
        )
        base = {
            "model": str(pipe),
            "task": task,
            "steps": steps,
            "lr": 0.02,
            "width": size,
            "height": size,
            "sample_steps": 2,
            "heldout_seeds": [1000, 1001],
            "eval_every": steps,
            "checkpoint_every": steps,
            "device": args.device,
            "lora": {"rank": 4, "alpha": 4, "targets": TARGETS},
        }
        clip_judge = {
            "kind": "clip",
            "model": clip,
            "pretrained": None,
            "allow_random": True,
            "clip_scale": 2.0,
        }
        rows = [
            _run("clip judge", {**base, "out_dir": tmp / "a"}, clip_judge),
            _run(
                "vlm judge (tiny LLaVA)",
                {**base, "out_dir": tmp / "b"},
                {"kind": "vlm", "model": str(vlm), "dtype": "float32"},
            ),
            _run(
                "clip judge + grad ckpt",
                {**base, "out_dir": tmp / "c"},
                clip_judge,
                gradient_checkpointing="on",
            ),
        ]
    print(
        f"tiny SD pipeline, {size}x{size}, 2 sampling steps with gradients, batch 1, "
        f"device {args.device}"
    )
    print(
        f"{'setting':<26} {'steps':>5} {'steps/s':>8} {'s/step':>7} {'peak GiB':>9} "
        f"{'p(yes) before':>13} {'after':>7}"
    )
    for r in rows:
        print(
            f"{r['setting']:<26} {r['steps']:>5} {r['steps_per_s']:>8.2f} {r['s_per_step']:>7.3f} "
            f"{r['peak_gib']:>9.2f} {r['p_before']:>13.5f} {r['p_after']:>7.5f}"
        )
    print(f"(peak memory: {rows[0]['memory']}; cumulative over the process)")


if __name__ == "__main__":
    main()
