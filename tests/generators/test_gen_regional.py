"""Regional layouts: validation, masks, the blend, and each region's conditioning in the UNet."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, GeneratorError
from generators.diffusers_backend import DiffusersGenerator
from generators.layout import Region, RegionalLayout, render_layout
from generators.regional import RegionalDenoiser, check_regional, region_masks
from generators.settings import GeneratorSettings

THREE = {
    "regions": [
        {"prompt": "a red car", "box": (0.0, 0.0, 0.5, 1.0)},
        {"prompt": "a blue bus", "box": (0.5, 0.0, 1.0, 0.5)},
        {"prompt": "a green tree", "box": (0.5, 0.5, 1.0, 1.0)},
    ]
}


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": "a street", "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


# -- the plan ----------------------------------------------------------------------------


def test_split_ratios_become_boxes() -> None:
    cols = RegionalLayout(
        split="columns", ratios=[1, 2], regions=[Region(prompt="a"), Region(prompt="b")]
    )
    assert cols.boxes() == [
        (0.0, 0.0, pytest.approx(1 / 3), 1.0),
        (pytest.approx(1 / 3), 0.0, 1.0, 1.0),
    ]
    rows = RegionalLayout(split="rows", regions=[Region(prompt="a"), Region(prompt="b")])
    assert rows.boxes() == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]


def test_layout_survives_the_queue_json() -> None:
    r = req(
        layout=RegionalLayout(split="columns", regions=[Region(prompt="a"), Region(prompt="b")])
    )
    back = GenerationRequest.model_validate_json(r.model_dump_json())
    assert back == r and back.idempotency_key() == r.idempotency_key()


@pytest.mark.parametrize(
    "bad",
    [
        {"regions": [{"prompt": "a", "box": (0.5, 0.0, 0.4, 1.0)}]},  # x0 > x1
        {"regions": [{"prompt": "a", "box": (0.0, 0.0, 1.2, 1.0)}]},  # outside the image
        {"regions": [Region(prompt="a")]},  # no box, no split
        {"regions": [{"prompt": ""}], "split": "rows"},  # empty prompt
        {"regions": [Region(prompt="a"), Region(prompt="b")], "split": "rows", "ratios": [1]},
        {"regions": [Region(prompt="a")], "ratios": [1]},  # ratios without a split
        {"regions": []},
        {"regions": [{"prompt": "a", "box": (0.1, 0.0, 0.2, 1.0)}], "split": "columns"},
    ],
)
def test_bad_layouts_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RegionalLayout.model_validate(bad)


def test_key_without_layout_is_unchanged() -> None:
    """Results stored before layouts existed are still found by their key."""
    r = req(seed=3)
    legacy = r.model_dump(mode="json")
    legacy.pop("layout")
    expected = hashlib.sha256(
        json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert r.idempotency_key() == expected
    assert req(seed=3, layout=THREE).idempotency_key() != expected


def test_region_masks_share_overlaps() -> None:
    masks = region_masks([(0.0, 0.0, 0.75, 1.0), (0.25, 0.0, 1.0, 1.0)], 4, 4)
    assert masks.shape == (2, 1, 4, 4)
    assert masks[0, 0, 0].tolist() == [1.0, 0.5, 0.5, 0.0]
    assert masks[1, 0, 0].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert torch.all(masks.sum(0) <= 1.0)


def test_diagram_svg_and_png() -> None:
    layout = RegionalLayout.model_validate(
        {"regions": [*THREE["regions"], {"prompt": "<b>sign</b>", "box": (0.1, 0.1, 0.2, 0.2)}]}
    )
    svg = render_layout(layout, base_prompt="a street").decode()
    assert svg.startswith("<svg") and svg.count("<rect") == 5
    assert "a blue bus" in svg and "&lt;b&gt;sign" in svg and "base: a street" in svg
    png = render_layout(layout, fmt="png", width=128, height=96)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(png)).size == (128, 96 + 24)


# -- the blend, on a fake UNet -----------------------------------------------------------


def test_blend_math_and_cfg_rows() -> None:
    """Rows: [uncond, cond] + one cond copy per region; eps = the module docstring's formula."""
    layout = RegionalLayout.model_validate(
        {
            "regions": [
                {"prompt": "a", "box": (0, 0, 0.5, 1)},
                {"prompt": "b", "box": (0.5, 0, 1, 1)},
            ],
            "base_ratio": 0.25,
        }
    )
    seen: dict[str, Any] = {}

    def unet(sample: torch.Tensor, t: Any, **kw: Any) -> tuple[torch.Tensor]:
        seen.update(kw, sample=sample)
        # Each row predicts its own row number everywhere: easy to follow through the blend.
        rows = torch.arange(sample.shape[0], dtype=torch.float32).view(-1, 1, 1, 1)
        return (rows.expand(-1, 4, 2, 2).clone(),)

    embeds = torch.stack([torch.full((3, 5), 10.0), torch.full((3, 5), 20.0)])
    pipe = SimpleNamespace(do_classifier_free_guidance=True)
    den = RegionalDenoiser(pipe, layout, embeds, None, unet)
    base_ehs = torch.stack([torch.zeros(3, 5), torch.ones(3, 5)])  # uncond, cond
    (eps,) = den.forward(
        torch.randn(2, 4, 2, 2), torch.tensor(5), encoder_hidden_states=base_ehs, return_dict=False
    )
    ehs = seen["encoder_hidden_states"]
    assert ehs.shape == (4, 3, 5)
    assert [float(ehs[i, 0, 0]) for i in range(4)] == [0.0, 1.0, 10.0, 20.0]
    assert torch.equal(seen["sample"][2], seen["sample"][1])  # regions copy the cond row
    assert torch.all(eps[0] == 0.0)  # uncond untouched
    # cond: left half region "a" (row 2), right half region "b" (row 3), base row 1 kept 25 %
    assert torch.allclose(eps[1, :, :, 0], torch.full((4, 2), 0.25 * 1 + 0.75 * 2))
    assert torch.allclose(eps[1, :, :, 1], torch.full((4, 2), 0.25 * 1 + 0.75 * 3))
    assert den.masks.shape == (2, 1, 2, 2) and den.steps == 1


def test_transformer_pipelines_are_refused_clearly() -> None:
    class FluxPipeline:
        transformer = object()

    with pytest.raises(GeneratorError, match="SD 1.x/2.x/SDXL UNet pipeline.*FluxPipeline.*fix"):
        check_regional(FluxPipeline(), "black-forest-labs/FLUX.1-dev")


# -- the real tiny pipelines --------------------------------------------------------------


@pytest.fixture
def unet_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`record(unet)` -> kwargs (cloned) of every forward of that UNet instance."""
    patched: list[Any] = []

    def record(unet: Any) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        original = unet.forward

        def spy(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append({"sample": sample.clone(), **kwargs})
            return original(sample, timestep, *args, **kwargs)

        unet.forward = spy
        patched.append(unet)
        return calls

    yield record
    for unet in patched:
        del unet.forward


@pytest.fixture
def recorded_masks(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    import generators.regional as regional

    out: list[torch.Tensor] = []
    original = regional.region_masks

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        out.append(original(*args, **kwargs))
        return out[-1]

    monkeypatch.setattr(regional, "region_masks", spy)
    return out


@pytest.mark.slow
async def test_three_regions_reach_the_sd_unet(
    tiny_settings: GeneratorSettings,
    store: ArtifactStore,
    unet_calls: Any,
    recorded_masks: list[torch.Tensor],
) -> None:
    g = DiffusersGenerator(tiny_settings, store)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        pipe = g._loaded.pipe
        calls = unet_calls(pipe.unet)
        plain = await g.generate(req(seed=4))
        n_plain = len(calls)
        res = await g.generate(req(seed=4, layout=THREE))
        with torch.no_grad():
            expected, _ = pipe.encode_prompt(
                ["a street", "a red car", "a blue bus", "a green tree"], "cpu", 1, False
            )
    finally:
        await g.aclose()
    regional = calls[n_plain:]
    assert len(regional) == 2  # one batched UNet call per step
    for call in regional:
        ehs = call["encoder_hidden_states"]
        assert ehs.shape[0] == 4  # base + 3 regions
        assert torch.allclose(ehs, expected, atol=1e-6)
        assert all(torch.equal(call["sample"][i], call["sample"][0]) for i in (1, 2, 3))
    masks = recorded_masks[-1]
    assert masks.shape == (3, 1, 32, 32)  # 64 px image, VAE factor 2 in the tiny pipeline
    assert masks[0, 0, :, :16].eq(1).all() and masks[0, 0, :, 16:].eq(0).all()
    assert masks[1, 0, :16, 16:].eq(1).all() and masks[1, 0, 16:, :].eq(0).all()
    assert masks[2, 0, 16:, 16:].eq(1).all() and masks[2, 0, :16, :].eq(0).all()
    assert res.image.sha256 != plain.image.sha256
    assert store.meta(res.image.sha256)["layout"]["regions"][1]["prompt"] == "a blue bus"
    assert pipe.unet.__dict__["forward"].__name__ == "spy"  # the swap was undone


@pytest.mark.slow
async def test_sdxl_regions_carry_pooled_embeds_and_time_ids(
    tiny_sdxl_dir: Path, tiny_settings: GeneratorSettings, store: ArtifactStore, unet_calls: Any
) -> None:
    settings = tiny_settings.model_copy(update={"model": str(tiny_sdxl_dir), "guidance_scale": 5.0})
    layout = RegionalLayout(
        split="columns", regions=[Region(prompt="a cat"), Region(prompt="a dog")]
    )
    g = DiffusersGenerator(settings, store)
    try:
        await g.warm(wait=True)
        assert g._loaded is not None
        pipe = g._loaded.pipe
        calls = unet_calls(pipe.unet)
        await g.generate(req(layout=layout))
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=["a cat", "a dog"], device="cpu", do_classifier_free_guidance=False
            )
    finally:
        await g.aclose()
    assert len(calls) == 2
    for call in calls:
        ehs = call["encoder_hidden_states"]
        added = call["added_cond_kwargs"]
        assert ehs.shape[0] == 4  # uncond, cond, 2 regions
        assert torch.allclose(ehs[2:], embeds, atol=1e-6)
        assert torch.allclose(added["text_embeds"][2:], pooled, atol=1e-6)
        assert torch.equal(added["time_ids"][2], added["time_ids"][1])
        assert torch.equal(added["time_ids"][3], added["time_ids"][1])
