"""Content-addressed artifact store: images and their metadata, named by sha256.

State, checkpoints and queue messages carry only the hash; any process that mounts the same
folder (a shared volume between agent and GPU workers) can read the bytes. Writes go to a
temporary file and are renamed into place, so readers never see a half-written artifact and two
writers of the same content cannot corrupt each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from core.errors import GroundworkError
from core.files import atomic_write

if TYPE_CHECKING:
    from PIL import Image


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


class ArtifactRef(BaseModel):
    """A pointer to bytes in the artifact store (content addressed by sha256)."""

    sha256: str = Field(description="Hex sha256 of the stored bytes; the artifact's identity.")
    uri: str = Field(description="Where the bytes can be read, e.g. file:///.../ab/cd/abcd....png")
    media_type: str = Field(default="image/png")
    width: int | None = None
    height: int | None = None


class ArtifactSettings(BaseModel):
    root: Path = Field(
        default=Path(".groundwork/artifacts"),
        description="Folder of the content-addressed artifact store (share it between hosts).",
    )


class ArtifactNotFound(GroundworkError, KeyError):
    pass


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> ArtifactStore:
        return cls(settings.root)

    def _dir(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4]

    def _find(self, sha256: str) -> Path | None:
        d = self._dir(sha256)
        if not d.is_dir():
            return None
        for p in d.iterdir():
            if p.name.startswith(sha256) and not p.name.endswith(".json"):
                return p
        return None

    def put_bytes(
        self,
        data: bytes,
        media_type: str = "application/octet-stream",
        meta: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        sha = hashlib.sha256(data).hexdigest()
        d = self._dir(sha)
        path = d / f"{sha}{_EXT.get(media_type, '.bin')}"
        if not path.exists():
            atomic_write(path, data)
        width = height = None
        if meta:
            width, height = meta.get("width"), meta.get("height")
        if meta is not None:
            merged = {**self.meta(sha), **meta, "media_type": media_type}
            atomic_write(d / f"{sha}.json", json.dumps(merged, sort_keys=True).encode())
        return ArtifactRef(
            sha256=sha, uri=path.as_uri(), media_type=media_type, width=width, height=height
        )

    def put_image(self, image: Image.Image, meta: dict[str, Any] | None = None) -> ArtifactRef:
        """Stored as PNG: lossless, so the hash is a stable identity for the pixels we saw."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        info = {"width": image.width, "height": image.height, **(meta or {})}
        return self.put_bytes(buf.getvalue(), "image/png", info)

    def exists(self, sha256: str) -> bool:
        return self._find(sha256) is not None

    def path(self, sha256: str) -> Path:
        p = self._find(sha256)
        if p is None:
            raise ArtifactNotFound(f"artifact {sha256} not in store {self.root}")
        return p

    def get_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def open_image(self, sha256: str) -> Image.Image:
        from PIL import Image

        with Image.open(self.path(sha256)) as im:
            im.load()
            return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()

    def meta(self, sha256: str) -> dict[str, Any]:
        p = self._dir(sha256) / f"{sha256}.json"
        if not p.exists():
            return {}
        loaded: dict[str, Any] = json.loads(p.read_text())
        return loaded

    def ref(self, sha256: str) -> ArtifactRef:
        p = self.path(sha256)
        m = self.meta(sha256)
        return ArtifactRef(
            sha256=sha256,
            uri=p.as_uri(),
            media_type=m.get("media_type", "application/octet-stream"),
            width=m.get("width"),
            height=m.get("height"),
        )
