"""Dual-Process feedback tuning with tiny models built from config: the tiny SD pipeline, a
tiny random-init open_clip judge and a tiny random-init LLaVA judge (real yes logits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.errors import InputError
from tuning.feedback import (
    FeedbackConfig,
    FeedbackTask,
    FeedbackTrainer,
    Progress,
    load_feedback_config,
)
from tuning.feedback_judge import Question

# The tiny UNet needs its convolutions adapted too to move the pixels in a few steps.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"]


@pytest.fixture(scope="module")
def clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.support.tiny_clip import register_tiny_clip

    return register_tiny_clip(tmp_path_factory.mktemp("clip"))


def _config(out: Path, model: Path, clip: str, **kw: Any) -> FeedbackConfig:
    task = FeedbackTask(
        prompts=["a red house", "a dog"],
        heldout_prompts=["a car"],
        questions=[Question(text="Is the image blue?", yes="a blue image", no="a red image")],
    )
    data: dict[str, Any] = {
        "out_dir": out,
        "model": str(model),
        "task": task,
        "steps": 4,
        "lr": 0.03,
        "width": 32,
        "height": 32,
        "sample_steps": 2,
        "heldout_seeds": [1000, 1001],
        "eval_every": 2,
        "checkpoint_every": 2,
        "lora": {"rank": 4, "alpha": 4, "targets": TARGETS},
        "judge": {
            "kind": "clip",
            "model": clip,
            "pretrained": None,
            "allow_random": True,
            "clip_scale": 2.0,
        },
    }
    data.update(kw)
    return FeedbackConfig.model_validate(data)


def test_feedback_learns_on_heldout_saves_reloads_and_resumes(
    tmp_path: Path, tiny_pipeline: Path, clip_name: str
) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    config = _config(tmp_path / "out", tiny_pipeline, clip_name)
    assert isinstance(config.task, FeedbackTask)
    lines: list[Progress] = []
    trainer = FeedbackTrainer(config, config.task, on_progress=lines.append)
    result = trainer.run()

    # The judge's yes-probability on held-out prompts and seeds rises; its loss falls.
    assert result.after["p_yes"] > result.before["p_yes"]
    assert result.after["loss"] < result.before["loss"]
    assert [p.step for p in lines] == [1, 2, 3, 4]
    assert "ETA" in lines[-1].line() and "GiB" in lines[-1].line()
    assert lines[1].heldout is not None and lines[0].heldout is None  # every 2 steps
    for name in ("report.md", "before.png", "after.png", "curve.png"):
        assert (result.report.parent / name).is_file()
    report = result.report.read_text()
    assert "Held-out" in report and "p(yes)" in report

    # The tuned folder names its base and reloads with diffusers' own LoRA loader.
    manifest = json.loads((result.tuned / "groundwork_lora.json").read_text())
    assert manifest["base_model"] == str(tiny_pipeline) and manifest["method"] == "feedback"
    pipe: Any = StableDiffusionPipeline.from_pretrained(tiny_pipeline)
    pipe.set_progress_bar_config(disable=True)

    def make() -> Any:
        return pipe(
            "a car",
            num_inference_steps=2,
            guidance_scale=0.0,
            width=32,
            height=32,
            generator=torch.Generator("cpu").manual_seed(1000),
            output_type="pt",
        ).images

    base = make()
    pipe.load_lora_weights(result.tuned, weight_name=manifest["weight_name"])
    tuned = make()
    assert float((tuned - base).abs().mean()) > 1e-4  # the LoRA changes the output
    with torch.no_grad():
        trained = trainer.images(["a car"], [1000])
    # ... into what the trainer made (same seed, same sampler, same weights).
    assert float((tuned - trained).abs().max()) < 1e-3

    # Resume: a longer run continues from the last checkpoint instead of starting over.
    longer = _config(tmp_path / "out", tiny_pipeline, clip_name, steps=5)
    assert isinstance(longer.task, FeedbackTask)
    again = FeedbackTrainer(longer, longer.task)
    resumed = again.run()
    assert resumed.resumed_from == 4 and resumed.steps == 5
    assert resumed.before == result.before  # the "before" of the run, not of the resume
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000005",
    ]


def test_vlm_judge_gives_a_differentiable_yes_logit(tmp_path: Path) -> None:
    """A real transformers VLM (tiny LLaVA from config) answers through its own processor's
    token layout; gradient ascent on the pixels raises its log p(yes)."""
    import torch

    from tests.support.tiny_vlm import build_tiny_vlm
    from tuning.feedback_judge import JudgeConfig, VLMJudge

    folder = build_tiny_vlm(tmp_path / "vlm")
    judge = VLMJudge(JudgeConfig(kind="vlm", model=str(folder), dtype="float32"), "cpu")
    assert judge.yes_ids and judge.no_ids
    questions = [Question(text="Is the image blue ?")]
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    first = judge.log_p_yes(images, ["a", "a"], questions)
    assert first.shape == (2, 1) and bool((first < 0).all())
    first.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    pixels = images.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([pixels], lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        (-judge.log_p_yes(pixels, ["a", "a"], questions).sum()).backward()
        opt.step()
    after = judge.log_p_yes(pixels.detach(), ["a", "a"], questions)
    assert float(after.sum()) > float(first.detach().sum())
    # a batch mixing prompts answers each image like a batch of one
    mixed = judge.log_p_yes(images.detach(), ["a", "red"], questions)
    alone = judge.log_p_yes(images.detach()[1:], ["red"], questions)
    assert torch.allclose(mixed[1], alone[0], atol=1e-5)
    # an image prompt: the reference goes in after the generated image, through the processor
    from PIL import Image

    Image.new("RGB", (20, 20), "blue").save(tmp_path / "ref.png")
    ref_q = [Question(text="Is it the image ?", images=[str(tmp_path / "ref.png")])]
    with_ref = judge.log_p_yes(images.detach(), ["a", "a"], ref_q)
    assert with_ref.shape == (2, 1) and bool(torch.isfinite(with_ref).all())
    # yes/no normalized score is a probability over the two answers
    judge.config.score = "yes_no"
    p = judge.log_p_yes(images.detach(), ["a", "a"], questions).exp()
    assert bool(((p > 0) & (p < 1)).all())


@pytest.mark.slow
def test_feedback_with_the_vlm_judge_learns(tmp_path: Path, tiny_pipeline: Path) -> None:
    from tests.support.tiny_vlm import build_tiny_vlm

    folder = build_tiny_vlm(tmp_path / "vlm")
    config = _config(
        tmp_path / "out",
        tiny_pipeline,
        "unused",
        steps=6,
        lr=0.05,
        judge={"kind": "vlm", "model": str(folder), "dtype": "float32"},
    )
    assert isinstance(config.task, FeedbackTask)
    result = FeedbackTrainer(config, config.task).run()
    assert result.after["loss"] < result.before["loss"]
    assert result.after["p_yes"] > result.before["p_yes"]


def test_config_file_task_file_and_errors(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "blue").save(tmp_path / "palette.png")
    (tmp_path / "task.toml").write_text(
        'prompts = ["a house"]\n'
        "[[questions]]\n"
        'text = "Does the image use the palette of the second image?"\n'
        'images = ["palette.png"]\n'
    )
    (tmp_path / "cfg.toml").write_text(
        'out_dir = "out"\ntask = "task.toml"\nsteps = 3\n[judge]\nkind = "vlm"\nmodel = "x"\n'
    )
    config, task = load_feedback_config(tmp_path / "cfg.toml")
    assert config.out_dir == tmp_path / "out"
    assert task.heldout_prompts == ["a house"]  # defaults to the training prompts
    assert task.questions[0].images == [str(tmp_path / "palette.png")]

    (tmp_path / "bad.toml").write_text('task = "missing.toml"\n')
    with pytest.raises(InputError, match="not found"):
        load_feedback_config(tmp_path / "bad.toml")
    (tmp_path / "clash.toml").write_text('task = "task.toml"\nsteps = 10\nheldout_seeds = [3]\n')
    with pytest.raises(InputError, match="held-out seeds"):
        load_feedback_config(tmp_path / "clash.toml")
