"""Knowledge base end to end: ingest a real folder, search, persist, reload, update, delete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from retrieval.api import KBHit, KnowledgeBaseUnavailable, open_knowledge_base
from retrieval.ingest import Progress, chunk_text, ingest, read_caption
from retrieval.kb import KnowledgeBase
from retrieval.settings import RetrievalSettings

Settings = Callable[..., RetrievalSettings]


def reasons(report: object) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in report.skipped:  # type: ignore[attr-defined]
        out.setdefault(s.reason, []).append(Path(s.path).name)
    return out


def test_ingest_search_persist_reload(make_settings: Settings, corpus_dir: Path) -> None:
    settings = make_settings()
    kb = KnowledgeBase.open(settings, create=True)
    ticks: list[Progress] = []
    report = ingest(kb, [corpus_dir], progress=ticks.append)

    assert report.images_added == 3 and report.documents_added == 5
    assert report.passages_added >= 7  # two Markdown files have two sections each
    why = reasons(report)
    assert why["not an image"] == ["broken.jpg"]
    assert why["not UTF-8 text"] == ["latin1.txt"]
    assert sorted(why["unsupported type"]) == ["blob.bin", "manual.pdf"]
    assert "secret.md" not in str(report.skipped)  # hidden folders are not walked
    assert ticks[-1].done == ticks[-1].total == 12  # caption sidecars are not files to ingest

    hits = kb.search_passages("Which colour is the Aurora sneaker?", top_k=3)
    assert hits[0].path is not None and hits[0].path.endswith("brand.md")
    assert "teal" in (hits[0].text or "") and hits[0].caption == "Brand colours"
    assert hits[0].source.startswith("file://") and len(hits[0].sha256) == 64

    imgs = kb.search_images("a teal sneaker", top_k=5)
    assert len(imgs) == 3 and all(isinstance(h, KBHit) and h.kind == "image" for h in imgs)
    captions = {Path(h.path or "").name: h.caption for h in imgs}
    assert captions == {
        "aurora_sneaker-teal.png": "aurora sneaker teal",
        "sunset.png": "Sunset over the Tagus river",
        "grey_backdrop.png": "Studio backdrop, seamless grey",
    }
    sunset = corpus_dir / "images" / "sunset.png"
    same = kb.similar_images(sunset, top_k=1)[0]
    assert same.path == str(sunset.resolve()) and same.score == pytest.approx(1.0, abs=1e-4)

    # reload from disk through the public API: same answers
    again = open_knowledge_base(settings)
    assert [h.id for h in again.search_passages("Aurora sneaker colour", 3)] == [
        h.id for h in kb.search_passages("Aurora sneaker colour", 3)
    ]
    assert again.similar_images(Image.open(sunset), top_k=1)[0].id == same.id


def test_reingest_skips_unchanged_updates_changed_and_prunes(
    make_settings: Settings, corpus_dir: Path, png: Callable[..., Path]
) -> None:
    settings = make_settings()
    ingest(KnowledgeBase.open(settings, create=True), [corpus_dir])
    kb = KnowledgeBase.open(settings)
    before = {w: len(i) for w, i in kb.indexes.items()}
    sunset_id = kb.similar_images(corpus_dir / "images" / "sunset.png", 1)[0].id

    report = ingest(kb, [corpus_dir])
    assert len(reasons(report)["unchanged"]) == 8
    assert report.images_added == report.documents_added == 0

    (corpus_dir / "coffee.txt").write_text(
        "A cortado is espresso cut with a small amount of warm milk.", encoding="utf-8"
    )
    png(corpus_dir / "images" / "sunset.png", (10, 10, 80))
    (corpus_dir / "weather.md").unlink()
    (corpus_dir / "copy.md").write_text(
        (corpus_dir / "guide" / "history.md").read_text(), encoding="utf-8"
    )
    report = ingest(KnowledgeBase.open(settings), [corpus_dir], prune=True)
    assert report.documents_updated == 1 and report.images_updated == 1
    assert reasons(report)["duplicate"] == ["copy.md"]
    assert report.removed_entries == 1

    kb = KnowledgeBase.open(settings)
    assert len(kb.indexes["images"]) == before["images"]
    assert len(kb.indexes["passages"]) == before["passages"] - 1
    top = kb.search_passages("cortado espresso", 1)[0]
    assert "cortado" in (top.text or "")
    assert all("Rain in Lisbon" not in (h.text or "") for h in kb.search_passages("rain", 10))
    new_sunset = kb.similar_images(corpus_dir / "images" / "sunset.png", 1)[0]
    assert new_sunset.id == sunset_id and new_sunset.score > 0.999  # same stable id, new vector


def test_remove_paths(make_settings: Settings, corpus_dir: Path) -> None:
    settings = make_settings()
    kb = KnowledgeBase.open(settings, create=True)
    ingest(kb, [corpus_dir])
    with kb.writing():
        n = kb.remove_paths([corpus_dir / "guide"])
        kb.save()
    assert n == 3  # brand.md has two passages, history.md one
    kb = KnowledgeBase.open(settings)
    assert all("guide" not in (h.path or "") for h in kb.search_passages("Aurora", 20))


def test_minilm_finds_the_right_passage_among_distractors(
    make_settings: Settings, tmp_path: Path
) -> None:
    docs = tmp_path / "facts"
    docs.mkdir()
    facts = {
        "eiffel.md": "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
        "everest.md": "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
        "honey.md": "Honey never spoils; edible honey has been found in ancient Egyptian tombs.",
        "octopus.md": "An octopus has three hearts and blue, copper-based blood.",
        "violin.md": "Stradivari violins were made in Cremona in the late 17th century.",
        "bamboo.md": "Some bamboo species grow almost a metre in a single day.",
        "mars.md": "Olympus Mons on Mars is the tallest volcano in the solar system.",
        "tea.md": "Matcha is a powdered green tea traditionally prepared with a bamboo whisk.",
    }
    for name, text in facts.items():
        (docs / name).write_text(text, encoding="utf-8")
    kb = KnowledgeBase.open(make_settings(clip_model=None), create=True)
    ingest(kb, [docs])
    questions = {
        "how many hearts does an octopus have": "octopus.md",
        "tallest mountain on Earth": "everest.md",
        "when was the Paris tower built": "eiffel.md",
        "biggest volcano among the planets": "mars.md",
        "which food lasts forever without going bad": "honey.md",
        "fast growing plant": "bamboo.md",
    }
    for q, want in questions.items():
        top = kb.search_passages(q, top_k=1)[0]
        assert Path(top.path or "").name == want, (q, top)


def test_without_clip_images_are_refused_with_a_reason(
    make_settings: Settings, corpus_dir: Path
) -> None:
    settings = make_settings(clip_model=None)
    kb = KnowledgeBase.open(settings, create=True)
    report = ingest(kb, [corpus_dir])
    assert len(reasons(report)["no CLIP model"]) == 4  # broken.jpg is never opened
    assert report.documents_added == 5 and "images" not in kb.indexes
    with pytest.raises(KnowledgeBaseUnavailable, match="clip_model"):
        kb.search_images("sneaker")
    assert kb.search_passages("Aurora sneaker", 1)


def test_mismatched_embedder_is_refused_then_rebuilt(
    make_settings: Settings, corpus_dir: Path, tmp_path: Path
) -> None:
    import json

    import open_clip

    ingest(KnowledgeBase.open(make_settings(), create=True), [corpus_dir])
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    path = tmp_path / "cfg" / "groundwork-other-clip.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    other = make_settings(clip_model="groundwork-other-clip")
    with pytest.raises(KnowledgeBaseUnavailable, match="was built with open_clip:groundwork-tiny"):
        KnowledgeBase.open(other)
    with pytest.raises(KnowledgeBaseUnavailable, match="text-embedder|sentence-transformers"):
        KnowledgeBase.open(make_settings(text_model="/models/other-minilm"))
    kb = KnowledgeBase.open(other, create=True, rebuild=True)
    assert "images" not in kb.indexes and "passages" in kb.indexes
    report = ingest(kb, [corpus_dir])
    assert report.images_added == 3
    assert KnowledgeBase.open(other).indexes["images"].spec.dim == 24


def test_too_large_and_unreadable_files(make_settings: Settings, corpus_dir: Path) -> None:
    kb = KnowledgeBase.open(make_settings(max_file_mb=0.0001), create=True)  # ~100 bytes
    report = ingest(kb, [corpus_dir, corpus_dir / "missing.md"])
    why = reasons(report)
    assert "brand.md" in why["too large"] and "missing.md" in why["unreadable"]
    assert any("MB >" in s.detail for s in report.skipped if s.reason == "too large")


def test_large_image_is_shrunk_before_batching(
    make_settings: Settings, tmp_path: Path, png: Callable[..., Path]
) -> None:
    from retrieval.ingest import _shrink

    big = png(tmp_path / "big" / "poster.png", (200, 30, 30), size=(1600, 900))
    kb = KnowledgeBase.open(make_settings(), create=True)
    ingest(kb, [big])
    meta = next(iter(kb.indexes["images"].meta.values()))
    assert (meta["width"], meta["height"]) == (1600, 900)
    assert _shrink(Image.open(big)).size == (910, 512)


def test_missing_kb_is_unavailable(make_settings: Settings) -> None:
    with pytest.raises(KnowledgeBaseUnavailable, match="kb add"):
        open_knowledge_base(make_settings())


def test_one_writer_at_a_time(make_settings: Settings) -> None:
    kb = KnowledgeBase.open(make_settings(), create=True)
    other = KnowledgeBase.open(make_settings(), create=True)
    with (
        kb.writing(),
        pytest.raises(KnowledgeBaseUnavailable, match="Another process"),
        other.writing(),
    ):
        pass


def test_two_writers_in_turn_lose_nothing(make_settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "one.md").write_text("The first fact is about otters.", encoding="utf-8")
    (tmp_path / "b" / "two.md").write_text("The second fact is about herons.", encoding="utf-8")
    settings = make_settings(clip_model=None)
    first = KnowledgeBase.open(settings, create=True)
    second = KnowledgeBase.open(settings, create=True)  # opened before `first` writes
    ingest(first, [tmp_path / "a"])
    ingest(second, [tmp_path / "b"])  # reloads what `first` saved before adding
    kb = KnowledgeBase.open(settings)
    assert len(kb.indexes["passages"]) == 2


def test_chunking_and_captions(tmp_path: Path) -> None:
    text = "# Title\n\nshort intro.\n\n## Part\n\n" + " ".join(f"word{i}" for i in range(400))
    chunks = chunk_text(text, chunk_chars=300, overlap=50)
    assert chunks[0] == ("Title", "short intro.")
    assert all(h == "Part" for h, _ in chunks[1:]) and len(chunks) > 5
    assert all(len(c) <= 300 for _, c in chunks)
    joined = " ".join(c for _, c in chunks[1:])
    assert all(f"word{i} " in joined + " " for i in range(400))  # nothing lost at the cuts
    assert chunks[1][1].split()[-1] in chunks[2][1]  # neighbours overlap

    img = tmp_path / "IMG_2041-finalVersion.jpg"
    assert read_caption(img) == "IMG 2041 final Version"
    (tmp_path / "IMG_2041-finalVersion.jpg.json").write_text('{"title": "Launch poster"}')
    assert read_caption(img) == "Launch poster"
