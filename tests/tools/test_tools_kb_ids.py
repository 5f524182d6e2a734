"""Image ids belong to the run (issue 8.2): web and knowledge-base images get their IMG_###
from the one registry of the run, and a text-only knowledge base (what `groundwork kb add`
builds by default) works inside the knowledge_base tool. Real knowledge bases: the packaged
MiniLM for text, a tiny random-init CLIP for images; web images from a loopback server."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.artifacts import ArtifactStore
from retrieval.settings import RetrievalSettings
from tests.tools.conftest import FakeDDGS, LoopServer, png, tool_settings
from tools.observations import ImageHit, ImageRegistry, Passage
from tools.toolkit import Toolkit

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
torch.set_num_threads(1)

pytestmark = pytest.mark.slow

TEXT = (
    "# Kangaroos\n\nThe red kangaroo is the largest of all kangaroos and the largest native "
    "land mammal of Australia.\n\n# Coffee\n\nA flat white is an espresso drink with thin "
    "steamed milk.\n"
)
KB_IMAGE = png((180, 80, 40))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.support.tiny_clip import register_tiny_clip

    return register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _build_kb(root: Path, settings: RetrievalSettings, *, with_image: bool) -> None:
    from retrieval.ingest import ingest
    from retrieval.kb import KnowledgeBase

    data = root / "data"
    data.mkdir(parents=True)
    (data / "animals.md").write_text(TEXT, encoding="utf-8")
    if with_image:
        (data / "kangaroo.png").write_bytes(KB_IMAGE)
    ingest(KnowledgeBase.open(settings, create=True), [data])


async def test_web_and_kb_images_share_the_runs_registry(
    tmp_path: Path, tiny_clip: str, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    settings = RetrievalSettings(
        kb_dir=tmp_path / "kb", clip_model=tiny_clip, device="cpu", batch_size=8
    )
    _build_kb(tmp_path, settings, with_image=True)
    fake_ddgs.image_results = {
        "roo": [
            {"image": server.add("/w1.png", "image/png", png((20, 40, 220))), "title": "w1"},
            {"image": server.add("/w2.png", "image/png", png((30, 200, 60))), "title": "w2"},
        ],
        # The knowledge base's own picture, found on the web too: one image, one id.
        "same": [{"image": server.add("/same.png", "image/png", KB_IMAGE), "title": "same"}],
    }
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
        retrieval=settings,
    )
    registry = ImageRegistry()
    try:
        web = await kit.image_search("roo", top_k=2, registry=registry)
        local = await kit.call(
            "knowledge_base", {"query": "kangaroo", "top_k": 2}, registry=registry
        )
        assert not isinstance(local, list)
        again = await kit.image_search("same", top_k=1, registry=registry)
    finally:
        await kit.aclose()
    assert web.ok and local.ok and again.ok, (web.error, local.error, again.error)
    web_ids = [h.img_id for h in web.items if isinstance(h, ImageHit)]
    kb_hits = [h for h in local.items if isinstance(h, ImageHit)]
    assert len(web_ids) == 2 and len(kb_hits) == 1
    assert kb_hits[0].img_id not in web_ids, "a local image must not reuse a web image's id"
    assert kb_hits[0].img_id == "IMG_003"
    ids = registry.ids()  # what the graph keeps in state as image_ids
    assert set(ids) == {"IMG_001", "IMG_002", "IMG_003"}
    assert ids[kb_hits[0].img_id] == kb_hits[0].sha256
    (same,) = [h for h in again.items if isinstance(h, ImageHit)]
    assert same.img_id == kb_hits[0].img_id and same.sha256 == kb_hits[0].sha256
    assert any(isinstance(p, Passage) and "red kangaroo" in p.text for p in local.items)


async def test_kb_numbering_continues_a_resumed_run(tmp_path: Path, tiny_clip: str) -> None:
    settings = RetrievalSettings(
        kb_dir=tmp_path / "kb", clip_model=tiny_clip, device="cpu", batch_size=8
    )
    _build_kb(tmp_path, settings, with_image=True)
    registry = ImageRegistry.from_ids({"IMG_001": "1" * 64, "IMG_002": "2" * 64})
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False, text_provider="none"),
        ArtifactStore(tmp_path / "a"),
        retrieval=settings,
    )
    try:
        obs = await kit.knowledge_base("kangaroo", registry=registry)
    finally:
        await kit.aclose()
    assert [h.img_id for h in obs.items if isinstance(h, ImageHit)] == ["IMG_003"]


async def test_text_only_knowledge_base_answers_with_passages(tmp_path: Path) -> None:
    settings = RetrievalSettings(kb_dir=tmp_path / "kb", device="cpu", batch_size=8)
    assert settings.clip_model is None  # what `groundwork kb add` builds by default
    _build_kb(tmp_path, settings, with_image=True)  # the image is skipped at ingestion
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False, text_provider="none"),
        ArtifactStore(tmp_path / "a"),
        retrieval=settings,
    )
    registry = ImageRegistry()
    try:
        obs = await kit.knowledge_base("largest kangaroo in Australia", registry=registry)
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    passages = [p for p in obs.items if isinstance(p, Passage)]
    assert passages and "red kangaroo" in passages[0].text
    assert passages[0].source.endswith("animals.md")
    assert not [h for h in obs.items if isinstance(h, ImageHit)]
    assert registry.ids() == {}


async def test_text_only_kb_with_clip_configured_in_the_toolkit(
    tmp_path: Path, tiny_clip: str
) -> None:
    """The KB was built without CLIP; the run has CLIP for ranking web images. Still works."""
    _build_kb(
        tmp_path,
        RetrievalSettings(kb_dir=tmp_path / "kb", device="cpu", batch_size=8),
        with_image=False,
    )
    settings = RetrievalSettings(
        kb_dir=tmp_path / "kb", clip_model=tiny_clip, device="cpu", batch_size=8
    )
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False, text_provider="none"),
        ArtifactStore(tmp_path / "a"),
        retrieval=settings,
    )
    try:
        obs = await kit.knowledge_base("flat white", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    assert any(isinstance(p, Passage) and "flat white" in p.text for p in obs.items)


async def test_image_kb_without_clip_in_the_run_keeps_its_passages(
    tmp_path: Path, tiny_clip: str
) -> None:
    """Built with CLIP, searched by a run with none: passages, and a note saying why no
    images (not a failed tool call)."""
    _build_kb(
        tmp_path,
        RetrievalSettings(kb_dir=tmp_path / "kb", clip_model=tiny_clip, device="cpu"),
        with_image=True,
    )
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False, text_provider="none"),
        ArtifactStore(tmp_path / "a"),
        retrieval=RetrievalSettings(kb_dir=tmp_path / "kb", device="cpu"),
    )
    try:
        obs = await kit.knowledge_base("kangaroo", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    assert any(isinstance(p, Passage) for p in obs.items)
    assert any("image search skipped" in n and "CLIP" in n for n in obs.notes), obs.notes
