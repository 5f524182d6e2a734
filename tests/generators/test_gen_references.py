"""Reference images tell the truth: which reached the model, how, in what order, and why not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GenerationResult, ReferenceUse
from generators.capabilities import capabilities, describe
from generators.diffusers_backend import DiffusersGenerator, _Loaded
from generators.families import (
    IP_ADAPTER_DEFAULTS,
    ModelInfo,
    default_ip_adapter,
    detect_family,
    info_from_configs,
    info_from_pipeline,
    model_info,
)
from generators.ip_adapter import ip_adapter_plan
from generators.noop import NoopGenerator
from generators.settings import GeneratorSettings

RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": "a red kangaroo", "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


def colours(store: ArtifactStore, *rgb: tuple[int, int, int]) -> list[str]:
    return [store.put_image(Image.new("RGB", (40, 40), c)).sha256 for c in rgb]


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


# -- families and the IP-Adapter table (configs only, no weights) -------------------------


@pytest.mark.parametrize(
    ("cls", "cross", "family"),
    [
        ("StableDiffusionPipeline", 768, "sd15"),
        ("StableDiffusionPipeline", 1024, "sd2"),
        ("StableDiffusionPipeline", 2048, "sdxl"),
        ("StableDiffusionXLPipeline", 2048, "sdxl"),
        ("StableDiffusionXLImg2ImgPipeline", None, "sdxl"),
        ("LatentConsistencyModelPipeline", 768, "sd15"),
        ("StableDiffusionPipeline", 8, "unknown"),
        ("StableDiffusion3Pipeline", None, "sd3"),
        ("FluxPipeline", None, "flux"),
        ("FluxKontextPipeline", None, "flux_kontext"),
        ("Flux2Pipeline", None, "flux2"),
        ("QwenImagePipeline", None, "qwen_image"),
        ("QwenImageEditPipeline", None, "qwen_image_edit"),
        ("QwenImageEditPlusPipeline", None, "qwen_image_edit_plus"),
    ],
)
def test_detect_family(cls: str, cross: int | None, family: str) -> None:
    assert detect_family(cls, cross) == family


def test_family_from_unet_config_of_sd_turbo_shape() -> None:
    """sd-turbo is an SD 2.1 model: StableDiffusionPipeline + a 1024-dim UNet."""
    info = info_from_configs(
        {"_class_name": "StableDiffusionPipeline", "tokenizer": ["transformers", "CLIPTokenizer"]},
        {"cross_attention_dim": 1024, "in_channels": 4},
    )
    assert info.family == "sd2" and info.tokenizers == ("tokenizer",) and info.regional


def test_ip_adapter_table_per_family() -> None:
    sd15, why = default_ip_adapter("sd15")
    assert sd15 is not None and why == ""
    assert (sd15.repo, sd15.subfolder, sd15.weight_name) == (
        "h94/IP-Adapter",
        "models",
        "ip-adapter_sd15.safetensors",
    )
    sdxl = IP_ADAPTER_DEFAULTS["sdxl"]
    assert (sdxl.subfolder, sdxl.weight_name) == ("sdxl_models", "ip-adapter_sdxl.safetensors")
    none, why = default_ip_adapter("sd2")
    assert none is None and "SD 2.x" in why and "no official" in why


def test_model_info_reads_folders(tiny_pipeline_dir: Path, tiny_sdxl_dir: Path) -> None:
    tiny = model_info(str(tiny_pipeline_dir))
    assert tiny is not None and tiny.pipeline_class == "StableDiffusionPipeline"
    assert tiny.cross_attention_dim == 8 and tiny.family == "unknown" and tiny.has_unet
    sdxl = model_info(str(tiny_sdxl_dir))
    assert sdxl is not None and sdxl.family == "sdxl"
    assert sdxl.tokenizers == ("tokenizer", "tokenizer_2")
    assert model_info(str(tiny_pipeline_dir / "nope")) is None


def _info(family: str) -> ModelInfo:
    cls = {"sd15": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline"}.get(
        family, "StableDiffusionXLPipeline"
    )
    cross = {"sd15": 768, "sd2": 1024, "sdxl": 2048}[family]
    return info_from_configs({"_class_name": cls}, {"cross_attention_dim": cross})


def test_plan_without_adapter_configured() -> None:
    plan = ip_adapter_plan(GeneratorSettings(), _info("sd15"))
    assert plan.spec is None and "no IP-Adapter configured" in plan.why
    assert "GROUNDWORK_GENERATOR__IP_ADAPTER=auto" in plan.why


def test_plan_auto_picks_family_weights_and_says_they_are_missing(empty_hf_cache: Path) -> None:
    settings = GeneratorSettings(ip_adapter="auto")
    for family, weight in (("sd15", "ip-adapter_sd15"), ("sdxl", "ip-adapter_sdxl")):
        plan = ip_adapter_plan(settings, _info(family))
        assert plan.spec is not None and plan.spec.weight_name == f"{weight}.safetensors"
        assert not plan.available
        assert (
            "not in the Hugging Face cache" in plan.why and "hf download h94/IP-Adapter" in plan.why
        )
    sd2 = ip_adapter_plan(settings, _info("sd2"))
    assert sd2.spec is None and not sd2.available and "SD 2.x" in sd2.why


def test_plan_explicit_repo_takes_family_file() -> None:
    plan = ip_adapter_plan(GeneratorSettings(ip_adapter="h94/IP-Adapter"), _info("sdxl"))
    assert plan.spec is not None
    assert (plan.spec.subfolder, plan.spec.weight_name) == (
        "sdxl_models",
        "ip-adapter_sdxl.safetensors",
    )


def test_plan_missing_folder(tmp_path: Path) -> None:
    plan = ip_adapter_plan(GeneratorSettings(ip_adapter=str(tmp_path / "ipa")), _info("sd15"))
    assert not plan.available and "do not exist" in plan.why


# -- the result model --------------------------------------------------------------------


def test_references_used_is_derived_and_survives_json() -> None:
    from core.artifacts import ArtifactRef

    result = GenerationResult(
        image=ArtifactRef(sha256="0" * 64, uri="file:///x.png"),
        seed=1,
        model="m",
        mode="text2img",
        steps=2,
        references_used=5,
        references=[
            ReferenceUse(sha256="a", used=True, how="ip_adapter", why="image 1"),
            ReferenceUse(sha256="b", used=False, why="over the limit"),
        ],
    )
    assert result.references_used == 1
    back = GenerationResult.model_validate_json(result.model_dump_json())
    assert back.references == result.references and back.references_used == 1


async def test_noop_reports_references_unused(store: ArtifactStore) -> None:
    res = await NoopGenerator(store).generate(req(reference_images=["a" * 64]))
    assert [(r.sha256, r.used) for r in res.references] == [("a" * 64, False)]
    assert res.references[0].why and res.references_used == 0


# -- the diffusers backend on the tiny pipeline -------------------------------------------


@pytest.mark.slow
async def test_unused_references_say_why(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    refs = colours(store, RED, BLUE)
    for ip_adapter, expected in ((None, "no IP-Adapter configured"), ("auto", "no default")):
        g = DiffusersGenerator(tiny_settings.model_copy(update={"ip_adapter": ip_adapter}), store)
        try:
            res = await g.generate(req(reference_images=refs))
        finally:
            await g.aclose()
        assert [r.sha256 for r in res.references] == refs
        assert all(not r.used and r.how == "none" for r in res.references)
        assert all(expected in r.why for r in res.references), res.references
        assert res.references_used == 0
        assert store.meta(res.image.sha256)["references"][0]["used"] is False


@pytest.mark.slow
async def test_ip_adapter_gets_references_in_request_order(
    tiny_settings: GeneratorSettings,
    tiny_pipeline_dir: Path,
    tmp_path: Path,
    store: ArtifactStore,
    pipeline_calls: Callable[[Any], list[dict[str, Any]]],
) -> None:
    from tests.support.tiny_pipeline import build_tiny_ip_adapter

    ipa = build_tiny_ip_adapter(tmp_path / "ipa", tiny_pipeline_dir)
    settings = tiny_settings.model_copy(
        update={"ip_adapter": str(ipa), "ip_adapter_weight_name": "ip-adapter_tiny.safetensors"}
    )
    g = DiffusersGenerator(settings, store)
    refs = colours(store, BLUE, RED, GREEN)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        calls = pipeline_calls(g._loaded.pipe)
        res = await g.generate(req(reference_images=refs))
        caps = await capabilities(g)
    finally:
        await g.aclose()
    passed = calls[-1]["ip_adapter_image"]
    assert len(passed) == 1  # one adapter ...
    assert [im.getpixel((0, 0)) for im in passed[0]] == [BLUE, RED, GREEN]  # ... refs in order
    assert [(r.sha256, r.used, r.how) for r in res.references] == [
        (s, True, "ip_adapter") for s in refs
    ]
    assert res.references_used == 3
    assert caps.takes_references and caps.reference_mode == "ip_adapter"
    assert not caps.keeps_ordinal_phrases  # the text encoder cannot point at image 2


@pytest.mark.slow
async def test_reference_that_is_the_init_image(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    try:
        base = await g.generate(req(seed=1))
        other = colours(store, GREY)[0]
        res = await g.generate(
            req(
                mode="img2img",
                init_image=base.image.sha256,
                reference_images=[base.image.sha256, other],
            )
        )
    finally:
        await g.aclose()
    first, second = res.references
    assert first.used and first.how == "img2img_init" and "init image" in first.why
    assert not second.used and second.how == "none"
    assert res.references_used == 1


# -- editing pipelines (Qwen-Image-Edit, FLUX.1 Kontext): images in order -----------------


class QwenImageEditPlusPipeline:
    """Stands in for the real class (whose weights are gigabytes): records its call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.scheduler = SimpleNamespace(config={})

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        n = len(kwargs["prompt"]) * kwargs.get("num_images_per_prompt", 1)
        return SimpleNamespace(images=[Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(n)])


class FluxKontextPipeline(QwenImageEditPlusPipeline):
    pass


def _with_fake(gen: DiffusersGenerator, pipe: Any) -> None:
    gen._loaded = _Loaded(
        model=gen.settings.model,
        pipe=pipe,
        device="cpu",
        dtype="float32",
        default_scheduler=pipe.scheduler,
        info=info_from_pipeline(pipe),
    )


async def test_edit_pipeline_receives_references_in_order(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    pipe = QwenImageEditPlusPipeline()
    _with_fake(g, pipe)
    refs = colours(store, BLUE, RED, GREEN, GREY)
    res = await g.generate(req(reference_images=refs))
    images = pipe.calls[-1]["image"]
    assert [im.getpixel((0, 0)) for im in images] == [BLUE, RED, GREEN]  # max 3, in order
    assert [(r.used, r.how) for r in res.references] == [(True, "edit_image")] * 3 + [
        (False, "none")
    ]
    assert "at most 3" in res.references[3].why
    assert "image 2 of 3" in res.references[1].why
    caps = await capabilities(g)
    assert caps.keeps_ordinal_phrases and caps.reference_mode == "edit_image"
    assert caps.max_references == 3


async def test_edit_pipeline_img2img_puts_the_edited_image_first(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    pipe = QwenImageEditPlusPipeline()
    _with_fake(g, pipe)
    init, *refs = colours(store, GREY, BLUE, RED, GREEN)
    res = await g.generate(req(mode="img2img", init_image=init, reference_images=refs))
    call = pipe.calls[-1]
    assert [im.getpixel((0, 0)) for im in call["image"]] == [GREY, BLUE, RED]
    assert "strength" not in call  # an editing model takes the instruction, not a strength
    assert [r.used for r in res.references] == [True, True, False]
    assert "image 2 of 3" in res.references[0].why


async def test_single_image_editor_gets_the_first_reference(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    pipe = FluxKontextPipeline()
    _with_fake(g, pipe)
    refs = colours(store, GREEN, RED)
    res = await g.generate(req(reference_images=refs))
    assert pipe.calls[-1]["image"].getpixel((0, 0)) == GREEN
    assert [r.used for r in res.references] == [True, False]


# -- capabilities -------------------------------------------------------------------------


async def test_capabilities_unloaded_diffusers(
    tiny_settings: GeneratorSettings, store: ArtifactStore
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    caps = await capabilities(g)
    assert g.loads == 0  # answered from the configs, nothing loaded
    assert caps.family == "unknown" and caps.pipeline_class == "StableDiffusionPipeline"
    assert not caps.takes_references and "no IP-Adapter configured" in caps.references_why
    assert caps.prompt_token_budget == 77 and caps.tokenizers == ["tokenizer"]
    assert caps.regional_layout and caps.inpaint == "latent_blend" and caps.batched_seeds


async def test_capabilities_of_a_generator_without_the_method(
    tiny_pipeline_dir: Path, store: ArtifactStore
) -> None:
    """The queue client has no capabilities(): configs and tokenizers answer for it."""
    remote = SimpleNamespace(default_model=str(tiny_pipeline_dir))
    caps = await capabilities(remote)
    assert caps.prompt_token_budget == 77 and not caps.takes_references
    assert "not known here" in caps.references_why and not caps.batched_seeds
    with_settings = await capabilities(
        remote, settings=GeneratorSettings(model=str(tiny_pipeline_dir), ip_adapter="auto")
    )
    assert "no default IP-Adapter" in with_settings.references_why


def test_describe_sd2_says_no_adapter() -> None:
    info = _info("sd2")
    settings = GeneratorSettings(ip_adapter="auto")
    plan = ip_adapter_plan(settings, info)
    caps = describe("sd-turbo", info, ip_adapter=(False, plan.why), budget=None)
    assert caps.family == "sd2" and not caps.takes_references and "SD 2.x" in caps.references_why
