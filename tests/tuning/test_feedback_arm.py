"""The `tuned-generator` arm (and `generator_lora` on any arm) through the eval harness, with
the tiny pipeline; and the diffusers backend loading a tuned folder as a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError


def make_tuned_folder(folder: Path, base: Path, *, seed: int = 0) -> Path:
    """A tuned folder with a non-zero LoRA, without training (the layout `tune` writes)."""
    import torch

    from tuning.lora_diffusers import add_lora, load_pipeline, precision, save_tuned_folder

    prec = precision("cpu", "no")
    pipe = load_pipeline(str(base), prec)
    add_lora(pipe, rank=2, alpha=2, targets=["to_q", "to_v", "conv1", "conv2"], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return save_tuned_folder(pipe, folder, str(base), {"method": "test"})


async def test_tuned_generator_arm_through_the_harness(tmp_path: Path, tiny_pipeline: Path) -> None:
    from evals import arun_eval, parse_config
    from evals.store import ResultStore

    tuned = make_tuned_folder(tmp_path / "tuned", tiny_pipeline)
    suite = tmp_path / "mini-v1.jsonl"
    suite.write_text(json.dumps({"id": "house", "prompt": "a red house"}) + "\n")
    config = parse_config(
        {
            "name": "tuned",
            "out_dir": str(tmp_path / "out"),
            "suites": [str(suite)],
            "seeds": [7],
            "concurrency": 1,
            "arms": [
                {"name": "plain", "kind": "plain"},
                {"name": "tuned", "kind": "tuned-generator", "lora": str(tuned)},
                {"name": "plain-lora", "kind": "plain", "generator_lora": str(tuned)},
            ],
            "settings": {
                "generator": {"model": str(tiny_pipeline), "width": 64, "height": 64, "steps": 2},
                "artifacts": {"root": str(tmp_path / "artifacts")},
            },
            "metrics": {"enabled": ["cost"]},
            "report": {"bootstrap": 200},
        }
    )
    await arun_eval(config, progress=False, write_report=False)
    store = ResultStore(config.out_dir / "results.sqlite", readonly=True)
    items = {a: store.item(a, "mini-v1/house", 7) for a in ("plain", "tuned", "plain-lora")}
    store.close()
    assert all(i is not None and i.status == "done" for i in items.values()), items
    shas = {a: i.image_sha256 for a, i in items.items() if i is not None}
    assert shas["tuned"] != shas["plain"]  # base + LoRA draws differently, same seed
    assert shas["tuned"] == shas["plain-lora"]  # the two spellings are one mechanism


async def test_backend_loads_a_tuned_folder_and_switches_adapters(
    tmp_path: Path, tiny_pipeline: Path
) -> None:
    from core.artifacts import ArtifactStore
    from generators.base import GenerationRequest
    from generators.diffusers_backend import DiffusersGenerator, resolve_model
    from generators.settings import GeneratorSettings

    tuned = make_tuned_folder(tmp_path / "tuned", tiny_pipeline)
    resolved = resolve_model(str(tuned), local_files_only=True)
    assert resolved.lora == str(tuned) and resolved.location == str(tiny_pipeline.resolve())
    gen = DiffusersGenerator(
        GeneratorSettings(model=str(tiny_pipeline), device="cpu"),
        ArtifactStore(tmp_path / "artifacts"),
    )
    try:
        # before anything is loaded, a tuned folder reads as its base model's configs
        caps = await gen.capabilities(str(tuned))
        assert caps.prompt_budget_why == "" and gen.prompt_budget(str(tuned)) is not None
        req = GenerationRequest(prompt="a red house", width=64, height=64, steps=2, seed=3)
        base = await gen.generate(req)
        lora = await gen.generate(req.model_copy(update={"model": str(tuned)}))
        again = await gen.generate(req)
    finally:
        await gen.aclose()
    assert lora.image.sha256 != base.image.sha256
    assert again.image.sha256 == base.image.sha256  # adapter off: the base model again
    assert gen.loads == 1  # one pipeline; the LoRA is an adapter on it


def test_a_tuned_folder_on_another_base_is_refused(tmp_path: Path, tiny_pipeline: Path) -> None:
    from agent.settings import Settings
    from evals.arms_tuned_generator import check_tuned_folder

    tuned = make_tuned_folder(tmp_path / "tuned", tiny_pipeline)
    same = Settings().merged({"generator": {"model": str(tiny_pipeline)}})
    assert check_tuned_folder(str(tuned), same, arm="t") == str(tuned.resolve())
    other = Settings().merged({"generator": {"model": "stabilityai/sd-turbo"}})
    with pytest.raises(InputError, match="trained on"):
        check_tuned_folder(str(tuned), other, arm="t")
    with pytest.raises(InputError, match="not a tuned generator folder"):
        check_tuned_folder(str(tmp_path), same, arm="t")
