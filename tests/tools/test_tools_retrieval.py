"""The tools on top of retrieval/: CLIP ranking of web images (tiny random-init open_clip,
no download) and knowledge_base over a real, small local corpus."""

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


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.support.tiny_clip import register_tiny_clip

    return register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _retrieval(tmp_path: Path, clip: str) -> RetrievalSettings:
    return RetrievalSettings(kb_dir=tmp_path / "kb", clip_model=clip, device="cpu", batch_size=8)


async def test_image_results_are_ranked_by_clip(
    tmp_path: Path, tiny_clip: str, fake_ddgs: type[FakeDDGS], server: LoopServer
) -> None:
    colors = [(200, 30, 30), (20, 40, 220), (30, 200, 60), (240, 240, 20)]
    fake_ddgs.image_results = {
        "q": [
            {"image": server.add(f"/{i}.png", "image/png", png(c)), "title": str(i)}
            for i, c in enumerate(colors)
        ]
    }
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
        retrieval=_retrieval(tmp_path, tiny_clip),
    )
    try:
        obs = await kit.image_search("q", top_k=4, registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    scores = [h.score for h in obs.items if isinstance(h, ImageHit)]
    assert len(scores) == 4 and all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


async def test_knowledge_base_returns_passages_and_stored_images(
    tmp_path: Path, tiny_clip: str
) -> None:
    from retrieval.ingest import ingest
    from retrieval.kb import KnowledgeBase

    data = tmp_path / "data"
    data.mkdir()
    (data / "animals.md").write_text(
        "# Kangaroos\n\nThe red kangaroo is the largest of all kangaroos and the largest native "
        "land mammal of Australia.\n\n# Coffee\n\nA flat white is an espresso drink with thin "
        "steamed milk.\n",
        encoding="utf-8",
    )
    (data / "kangaroo.png").write_bytes(png((180, 80, 40)))
    settings = _retrieval(tmp_path, tiny_clip)
    ingest(KnowledgeBase.open(settings, create=True), [data])

    store = ArtifactStore(tmp_path / "a")
    registry = ImageRegistry()
    registry.assign("f" * 64)
    kit = Toolkit(
        tool_settings(
            tmp_path, [], cache_enabled=False, text_provider="none", image_provider="none"
        ),
        store,
        retrieval=settings,
    )
    try:
        obs = await kit.knowledge_base("largest kangaroo in Australia", top_k=2, registry=registry)
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    passages = [p for p in obs.items if isinstance(p, Passage)]
    images = [h for h in obs.items if isinstance(h, ImageHit)]
    assert "red kangaroo" in passages[0].text and passages[0].source.endswith("animals.md")
    assert images and images[0].img_id == "IMG_002"
    assert store.exists(images[0].sha256) and store.exists(images[0].thumbnail_sha256 or "")


async def test_missing_knowledge_base_is_an_observation(tmp_path: Path, tiny_clip: str) -> None:
    kit = Toolkit(
        tool_settings(tmp_path, [], cache_enabled=False),
        ArtifactStore(tmp_path / "a"),
        retrieval=_retrieval(tmp_path, tiny_clip),
    )
    try:
        obs = await kit.knowledge_base("anything", registry=ImageRegistry())
    finally:
        await kit.aclose()
    assert not obs.ok and "No knowledge base" in (obs.error or "")
