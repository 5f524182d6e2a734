"""Shared fixtures: a tiny random-init open_clip model (no download) and the packaged MiniLM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from retrieval.settings import RetrievalSettings
from tests.support.tiny_clip import register_tiny_clip

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture()
def make_settings(tmp_path: Path, tiny_clip: str) -> Callable[..., RetrievalSettings]:
    def make(**kw: Any) -> RetrievalSettings:
        base: dict[str, Any] = {
            "kb_dir": tmp_path / "kb",
            "clip_model": tiny_clip,
            "device": "cpu",
            "batch_size": 8,
        }
        base.update(kw)
        return RetrievalSettings(**base)

    return make


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).rectangle((4, 4, size[0] // 2, size[1] // 2), fill=(255 - color[0], 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


CORPUS = {
    "animals.md": "# Kangaroos\n\nThe red kangaroo is the largest of all kangaroos and the "
    "largest native land mammal of Australia. Males can stand 1.8 metres tall.\n\n"
    "# Penguins\n\nEmperor penguins breed in the Antarctic winter, huddling together against "
    "the wind while the males incubate the eggs on their feet.\n",
    "coffee.txt": "A flat white is an espresso drink with a thin layer of steamed, velvety "
    "milk. It originated in Australia or New Zealand in the 1980s.",
    "guide/brand.md": "# Brand colours\n\nThe Aurora sneaker line uses teal #1ABC9C as its "
    "primary colour and a warm sand tone for the sole. Logos are never placed on the heel.\n\n"
    "# Photography\n\nProduct shots are taken on a seamless grey background with soft light "
    "from the left.",
    "guide/history.md": "The company was founded in 2009 in Lisbon by two climbers who wanted "
    "lighter approach shoes. Its first factory opened in Porto in 2012.",
    "weather.md": "Rain in Lisbon is most frequent between November and February; summers are "
    "dry and hot, with afternoon winds from the north.",
}


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    """A small real folder: text documents, images with and without caption sidecars, junk."""
    root = tmp_path / "data"
    for rel, text in CORPUS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    _png(root / "images" / "aurora_sneaker-teal.png", (26, 188, 156))
    _png(root / "images" / "sunset.png", (250, 120, 40))
    (root / "images" / "sunset.txt").write_text("Sunset over the Tagus river", encoding="utf-8")
    _png(root / "images" / "grey_backdrop.png", (128, 128, 128))
    (root / "images" / "grey_backdrop.json").write_text(
        '{"caption": "Studio backdrop, seamless grey"}', encoding="utf-8"
    )
    (root / "images" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "manual.pdf").write_bytes(b"%PDF-1.4 binary")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / ".hidden" / "secret.md").parent.mkdir(parents=True)
    (root / ".hidden" / "secret.md").write_text("hidden", encoding="utf-8")
    return root


@pytest.fixture()
def png() -> Callable[..., Path]:
    return _png
