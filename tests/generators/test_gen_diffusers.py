"""The in-process diffusers generator on a tiny real pipeline (CPU, 64x64, 2 steps)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from core.artifacts import ArtifactStore
from generators.base import GenerationRequest, Generator, ModelNotFoundError
from generators.diffusers_backend import DiffusersGenerator, check_model_available
from generators.settings import GeneratorSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def gen(tiny_settings: GeneratorSettings, shared_store: ArtifactStore) -> DiffusersGenerator:
    """One resident pipeline for the module: loading is the slow part, as in production."""
    return DiffusersGenerator(tiny_settings, shared_store)


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = {"prompt": "a red kangaroo", "width": 64, "height": 64, "steps": 2}
    base.update(kw)
    return GenerationRequest.model_validate(base)


async def test_is_a_generator(gen: DiffusersGenerator) -> None:
    assert isinstance(gen, Generator)


async def test_text2img_png_size_and_metadata(
    gen: DiffusersGenerator, shared_store: ArtifactStore
) -> None:
    res = await gen.generate(req(seed=1))
    assert res.mode == "text2img" and res.steps == 2 and res.device == "cpu"
    path = shared_store.path(res.image.sha256)
    assert path.suffix == ".png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    meta = shared_store.meta(res.image.sha256)
    assert meta["prompt"] == "a red kangaroo" and meta["seed"] == 1
    assert meta["mode"] == "text2img" and meta["steps"] == 2
    assert meta["model"] == gen.settings.model


async def test_seed_is_deterministic_and_matters(gen: DiffusersGenerator) -> None:
    a = await gen.generate(req(seed=7))
    b = await gen.generate(req(seed=7))
    c = await gen.generate(req(seed=8))
    assert a.image.sha256 == b.image.sha256
    assert a.image.sha256 != c.image.sha256


async def test_fresh_generator_same_pixels(
    tiny_settings: GeneratorSettings, gen: DiffusersGenerator, store: ArtifactStore
) -> None:
    other = DiffusersGenerator(tiny_settings, store)
    try:
        a = await other.generate(req(seed=3))
    finally:
        await other.aclose()
    b = await gen.generate(req(seed=3))
    assert a.image.sha256 == b.image.sha256


async def test_img2img_and_inpaint_share_weights(
    gen: DiffusersGenerator, shared_store: ArtifactStore
) -> None:
    base = await gen.generate(req(seed=1))
    edit = await gen.generate(
        req(seed=1, mode="img2img", init_image=base.image.sha256, strength=0.5, steps=4)
    )
    assert edit.mode == "img2img" and edit.image.sha256 != base.image.sha256
    with Image.open(shared_store.path(edit.image.sha256)) as im:
        assert im.size == (64, 64)
    mask = shared_store.put_image(Image.new("L", (64, 64), 255))
    inp = await gen.generate(
        req(mode="inpaint", init_image=base.image.sha256, mask_image=mask.sha256, strength=0.9)
    )
    assert inp.mode == "inpaint"
    loaded = gen._loaded
    assert loaded is not None
    for mode in ("img2img", "inpaint"):
        assert loaded.modes[mode].unet is loaded.pipe.unet


async def test_progress_callback_on_loop_thread(gen: DiffusersGenerator) -> None:
    import threading

    calls: list[tuple[int, int, str]] = []
    await gen.generate(
        req(seed=2, steps=3),
        on_progress=lambda i, n: calls.append((i, n, threading.current_thread().name)),
    )
    await asyncio.sleep(0)  # call_soon_threadsafe callbacks run on the next loop turn
    assert [(i, n) for i, n, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert {t for *_, t in calls} == {threading.current_thread().name}


async def test_batch_matches_single(gen: DiffusersGenerator) -> None:
    singles = [await gen.generate(req(seed=s, prompt=f"p{s}")) for s in (11, 12)]
    batch = await gen.generate_batch([req(seed=s, prompt=f"p{s}") for s in (11, 12)])
    assert [r.image.sha256 for r in batch] != [None, None]
    assert batch[0].image.sha256 != batch[1].image.sha256
    # On CPU batched and single calls agree bit-for-bit; on GPUs kernels may differ slightly.
    assert [r.image.sha256 for r in batch] == [r.image.sha256 for r in singles]


async def test_scheduler_option(gen: DiffusersGenerator) -> None:
    a = await gen.generate(req(seed=5, scheduler="euler_a"))
    b = await gen.generate(req(seed=5))
    assert a.image.sha256 != b.image.sha256
    assert gen._loaded is not None
    assert type(gen._loaded.pipe.scheduler).__name__ == "DDIMScheduler"


async def test_event_loop_not_blocked(gen: DiffusersGenerator) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    t = asyncio.create_task(ticker())
    await gen.generate(req(seed=9, steps=6))
    t.cancel()
    assert ticks > 0


def test_missing_local_folder_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as ei:
        check_model_available(str(missing), local_files_only=True)
    msg = str(ei.value)
    assert str(missing) in msg and "GROUNDWORK_GENERATOR__MODEL" in msg and "\n" not in msg


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        check_model_available(str(tmp_path), local_files_only=True)


def test_uncached_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ModelNotFoundError) as ei:
        check_model_available("someorg/not-a-cached-model", local_files_only=True)
    msg = str(ei.value)
    assert "someorg/not-a-cached-model" in msg
    assert str(tmp_path / "hf-cache") in msg
    assert "hf download someorg/not-a-cached-model" in msg
    assert "GROUNDWORK_GENERATOR__MODEL" in msg and "\n" not in msg


def test_unreachable_hub_online_is_model_not_found_not_transport_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: huggingface_hub 2.x raises httpx2.ConnectError, which leaked as a traceback."""
    import huggingface_hub
    import huggingface_hub.constants as c

    transport = pytest.importorskip("httpx2" if _hub_uses_httpx2() else "httpx")

    def unreachable(*args: object, **kwargs: object) -> bool:
        raise transport.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "file_exists", unreachable)
    with pytest.raises(ModelNotFoundError, match="hub could not be reached.*ConnectError"):
        check_model_available("someorg/a-model", local_files_only=False)


def _hub_uses_httpx2() -> bool:
    import importlib.util

    return importlib.util.find_spec("httpx2") is not None


async def test_generate_missing_model_raises(store: ArtifactStore, tmp_path: Path) -> None:
    g = DiffusersGenerator(
        GeneratorSettings(model=str(tmp_path / "missing"), local_files_only=True), store
    )
    with pytest.raises(ModelNotFoundError):
        await g.generate(req())


def test_tiny_pipeline_deterministic(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    from tests.support.tiny_pipeline import build_tiny_pipeline

    other = build_tiny_pipeline(tmp_path / "again", seed=0)
    for rel in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (other / rel).read_bytes() == (tiny_pipeline_dir / rel).read_bytes()


def test_tiny_cli(tmp_path: Path) -> None:
    from tests.support.tiny_pipeline import main

    main([str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "model_index.json").is_file()


async def test_ip_adapter_reference_images(
    tiny_settings: GeneratorSettings, tiny_pipeline_dir: Path, tmp_path: Path, store: ArtifactStore
) -> None:
    from tests.support.tiny_pipeline import build_tiny_ip_adapter

    ipa = build_tiny_ip_adapter(tmp_path / "ipa", tiny_pipeline_dir)
    settings = tiny_settings.model_copy(
        update={"ip_adapter": str(ipa), "ip_adapter_weight_name": "ip-adapter_tiny.safetensors"}
    )
    g = DiffusersGenerator(settings, store)
    red = store.put_image(Image.new("RGB", (40, 40), (255, 0, 0))).sha256
    blue = store.put_image(Image.new("RGB", (40, 40), (0, 0, 255))).sha256
    try:
        plain = await g.generate(req(seed=1))
        with_red = await g.generate(req(seed=1, reference_images=[red]))
        with_both = await g.generate(req(seed=1, reference_images=[red, blue]))
        again = await g.generate(req(seed=1, reference_images=[red]))
    finally:
        await g.aclose()
    assert plain.references_used == 0 and with_red.references_used == 1
    assert with_both.references_used == 2
    assert [r.how for r in with_both.references] == ["ip_adapter", "ip_adapter"]
    assert len({plain.image.sha256, with_red.image.sha256, with_both.image.sha256}) == 3
    assert again.image.sha256 == with_red.image.sha256
    assert store.meta(with_red.image.sha256)["reference_images"] == [red]


async def test_references_without_ip_adapter_are_reported(gen: DiffusersGenerator) -> None:
    ref = gen.store.put_image(Image.new("RGB", (8, 8))).sha256
    res = await gen.generate(req(seed=1, reference_images=[ref]))
    assert res.references_used == 0
    assert [(r.sha256, r.used) for r in res.references] == [(ref, False)]
    assert "no IP-Adapter configured" in res.references[0].why


def test_snap_size_buckets() -> None:
    from generators.batching import snap_size

    assert snap_size(513, 770) == (512, 768)
    assert snap_size(1000, 600, ["512x512", "768x512", "512x768"]) == (768, 512)
    assert snap_size(600, 600, ["512x512", "768x512"]) == (512, 512)


def test_unknown_scheduler_is_explicit() -> None:
    from generators.base import GeneratorError
    from generators.diffusers_backend import _scheduler_class

    with pytest.raises(GeneratorError, match="unknown scheduler 'nope'"):
        _scheduler_class("nope")
    assert _scheduler_class("dpm++_karras")[1] == {"use_karras_sigmas": True}
