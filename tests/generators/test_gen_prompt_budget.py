"""Prompt budgets counted with the model's own tokenizer files (no pipeline, no torch needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.artifacts import ArtifactStore
from generators.base import ModelNotFoundError
from generators.prompt_budget import PromptBudget, prompt_budget
from generators.settings import GeneratorSettings

LONG = " ".join(["kangaroo"] * 20)  # 20 words of 8 characters: far over 77 character tokens


def test_tiny_budget_counts_like_the_pipeline_tokenizer(tiny_pipeline_dir: Path) -> None:
    from transformers import CLIPTokenizer

    budget = PromptBudget.from_model(str(tiny_pipeline_dir), local_files_only=True)
    assert budget.max_tokens == 77 and budget.tokenizers == ("tokenizer",)
    reference = CLIPTokenizer.from_pretrained(str(tiny_pipeline_dir / "tokenizer"))
    for text in ("a red kangaroo", "Milan, 2026: the torch relay!", LONG):
        assert budget.count(text) == len(reference(text).input_ids)
    assert budget.count("a red kangaroo") == 14  # 12 characters + start and end tokens
    assert budget.fits("a red kangaroo") and not budget.fits(LONG)


def test_cut_keeps_the_longest_fitting_prefix(tiny_pipeline_dir: Path) -> None:
    budget = PromptBudget.from_model(str(tiny_pipeline_dir), local_files_only=True)
    kept = budget.cut(LONG)
    assert budget.fits(kept) and LONG.startswith(kept)
    assert not budget.fits(kept + " kangaroo")
    assert budget.cut("short") == "short"


def test_sdxl_counts_both_encoders(tiny_sdxl_dir: Path) -> None:
    budget = PromptBudget.from_model(str(tiny_sdxl_dir), local_files_only=True)
    assert budget.tokenizers == ("tokenizer", "tokenizer_2") and budget.max_tokens == 77


def _fake_flux(root: Path, tiny: Path) -> Path:
    """A FLUX-shaped folder: a CLIP tokenizer (pooled only) and a long 'T5' tokenizer_2."""
    root.mkdir()
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "FluxPipeline",
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "T5TokenizerFast"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
            }
        )
    )
    shutil.copytree(tiny / "tokenizer", root / "tokenizer")
    shutil.copytree(tiny / "tokenizer", root / "tokenizer_2")
    return root


def test_long_encoder_family_uses_its_sequence_budget(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    budget = PromptBudget.from_model(str(_fake_flux(tmp_path / "flux", tiny_pipeline_dir)))
    assert budget.tokenizers == ("tokenizer_2",) and budget.max_tokens == 512
    assert budget.fits(LONG)


def test_slow_tokenizer_files_work(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    """Real SD repos ship vocab.json + merges.txt, no tokenizer.json."""
    from tests.support.tiny_pipeline import _write_tokenizer_files

    root = tmp_path / "sd"
    root.mkdir()
    shutil.copy(tiny_pipeline_dir / "model_index.json", root)
    _write_tokenizer_files(root / "tokenizer")
    config = json.loads((tiny_pipeline_dir / "tokenizer" / "tokenizer_config.json").read_text())
    config.pop("backend", None)
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    budget = PromptBudget.from_model(str(root), local_files_only=True)
    assert budget.max_tokens == 77 and budget.count("a red kangaroo") == 14


def test_uncached_hub_model_says_how_to_fetch_tokenizers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ModelNotFoundError) as ei:
        PromptBudget.from_model("someorg/not-cached-model", local_files_only=True)
    msg = str(ei.value)
    assert "someorg/not-cached-model" in msg and "hf download" in msg and "\n" not in msg


def test_module_function_for_generators_without_the_method(tiny_pipeline_dir: Path) -> None:
    remote = SimpleNamespace(default_model=str(tiny_pipeline_dir))
    assert prompt_budget(remote).max_tokens == 77
    with pytest.raises(ModelNotFoundError):
        prompt_budget(SimpleNamespace())


@pytest.mark.slow
async def test_loaded_pipeline_budget_matches_files(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    from generators.diffusers_backend import DiffusersGenerator

    g = DiffusersGenerator(tiny_settings, store)
    try:
        from_files = g.prompt_budget()
        await g.warm(wait=True)
        from_pipe = g.prompt_budget()
    finally:
        await g.aclose()
    for text in ("a red kangaroo", LONG):
        assert from_pipe.count(text) == from_files.count(text)
    assert from_pipe.max_tokens == from_files.max_tokens == 77


async def test_a_tuned_folder_has_its_base_models_tokenizers_and_capabilities(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    """A tuned folder (LoRA + manifest, no model_index.json) is described by its base model,
    also where there is no pipeline (a queue client's static capabilities)."""
    from generators.capabilities import capabilities, static_capabilities
    from generators.tuned import LORA_MANIFEST, LORA_WEIGHTS

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / LORA_MANIFEST).write_text(json.dumps({"base_model": str(tiny_pipeline_dir)}))
    (tuned / LORA_WEIGHTS).write_bytes(b"")
    budget = PromptBudget.from_model(str(tuned), local_files_only=True)
    assert budget.max_tokens == 77 and budget.tokenizers == ("tokenizer",)
    settings = GeneratorSettings(model=str(tuned), local_files_only=True)
    base = static_capabilities(str(tiny_pipeline_dir), settings)
    caps = static_capabilities(str(tuned), settings)
    assert caps.prompt_token_budget == 77 and caps.pipeline_class == base.pipeline_class != ""
    assert caps.regional_layout == base.regional_layout and caps.inpaint == base.inpaint
    # a generator that cannot describe itself (the queue client) is described the same way
    queue_like = SimpleNamespace(default_model=str(tuned))
    described = await capabilities(queue_like, settings=settings)
    assert described.prompt_token_budget == 77
    assert described.pipeline_class == base.pipeline_class


def test_a_remembered_failure_is_raised_as_a_fresh_copy_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup failure is kept per model and process; raising the kept object again would
    add each caller's frames to its traceback and keep every earlier run's state alive (a chat
    grew a run's graph state a turn). Each raise is a copy with the same message and no old
    frames."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    model = f"someorg/gone-{tmp_path.name}"
    seen: list[ModelNotFoundError] = []
    depths: list[int] = []
    for _ in range(4):
        with pytest.raises(ModelNotFoundError) as ei:
            PromptBudget.from_model(model, local_files_only=True)
        seen.append(ei.value)
        tb, depth = ei.value.__traceback__, 0
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        depths.append(depth)
    assert len({id(e) for e in seen}) == 4  # never the same object twice
    assert len({str(e) for e in seen}) == 1
    assert depths[1] == depths[2] == depths[3]  # no traceback grows from raise to raise
