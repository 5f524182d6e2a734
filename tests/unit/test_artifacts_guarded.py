"""The artifact store decodes through the one guarded decoder: it also holds web images, so a
bomb or a broken file stored there is `ImageRejected` (a GroundworkError the generator turns
into a non-retryable input error), never a Pillow exception that ends a run as "a bug"."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from core.artifacts import ArtifactSettings, ArtifactStore
from core.errors import GroundworkError
from core.images import ImageRejected
from tests.support.hostile import BOMBS


@pytest.mark.parametrize("kind", sorted(BOMBS))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_stored_bomb_is_refused_from_its_header(tmp_path: Path, kind: str, seed: int) -> None:
    store = ArtifactStore.from_settings(ArtifactSettings(root=tmp_path))
    ref = store.put_bytes(BOMBS[kind](random.Random(seed)), "image/png")
    with pytest.raises(ImageRejected) as err:
        store.open_image(ref.sha256)
    assert isinstance(err.value, GroundworkError) and err.value.retryable is False


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.8])
def test_a_truncated_or_junk_artifact_is_refused(tmp_path: Path, cut: float) -> None:
    store = ArtifactStore.from_settings(ArtifactSettings(root=tmp_path))
    buf = io.BytesIO()
    noise = random.Random(3).randbytes(64 * 48 * 3)  # incompressible: the pixels fill the file
    Image.frombytes("RGB", (64, 48), noise).save(buf, "PNG")
    data = buf.getvalue()
    for blob in (data[: int(len(data) * cut)], b"\x89PNG junk" * 3):
        ref = store.put_bytes(blob, "image/png")
        with pytest.raises(ImageRejected):
            store.open_image(ref.sha256)


def test_an_ordinary_image_and_a_mask_keep_their_modes(tmp_path: Path) -> None:
    store = ArtifactStore.from_settings(ArtifactSettings(root=tmp_path))
    rgb = store.put_image(Image.new("RGB", (32, 16), "blue"))
    mask = store.put_image(Image.new("L", (32, 16), 255))
    assert store.open_image(rgb.sha256).mode == "RGB"
    assert store.open_image(mask.sha256).mode == "L"
