"""Content-addressed artifact store: images and their metadata, named by sha256.

State, checkpoints and queue messages carry only the hash; any process that mounts the same
folder (a shared volume between agent and GPU workers) can read the bytes. Writes go to a
temporary file and are renamed into place, so readers never see a half-written artifact and two
writers of the same content cannot corrupt each other.

Past one host, `GROUNDWORK_ARTIFACTS__URL=s3://bucket/prefix` puts the bytes on any
S3-compatible endpoint (AWS, MinIO, Ceph, R2; `GROUNDWORK_ARTIFACTS__S3_ENDPOINT_URL` for
non-AWS) through boto3. The local folder is then a write-through cache: every write goes to the
bucket too, and a hash this host has not seen is fetched from the bucket on first read, so
callers that need a file path (`path()`) keep working on any replica. Downloads for clients are
presigned URLs (`presigned_url()`), valid on every replica.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, SecretStr, field_validator

from core.errors import GroundworkError
from core.files import atomic_write, writable_dir_problem

if TYPE_CHECKING:
    from PIL import Image


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
STORED_MAX_PIXELS = 8192 * 8192
"""Cap on a stored image's declared size when it is decoded (generated images are far smaller;
web images were already checked when fetched, this guards the store itself)."""
STORED_MAX_BYTES = 1536 * 1024 * 1024
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
        description="Folder of the content-addressed artifact store (share it between hosts); "
        "with an s3:// url, this host's cache of the bucket.",
    )
    url: str | None = Field(
        default=None,
        description="s3://bucket/prefix: store artifacts on an S3-compatible endpoint (shared by "
        "every host and replica); None = the local folder only.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint for non-AWS stores (MinIO, Ceph, R2), e.g. http://minio:9000.",
    )
    s3_region: str | None = Field(default=None, description="S3 region (None: boto3's default).")
    s3_access_key_id: str | None = Field(
        default=None, description="None: boto3's usual credential chain (env, profile, role)."
    )
    s3_secret_access_key: SecretStr | None = Field(default=None)
    presign_ttl_s: int = Field(
        default=3600, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned download URLs."
    )

    @field_validator("url")
    @classmethod
    def _s3_or_none(cls, url: str | None) -> str | None:
        if not url:
            return None
        bucket = url.removeprefix("s3://").split("/", 1)[0]
        if not url.startswith("s3://") or not bucket:
            raise ValueError("must be s3://bucket or s3://bucket/prefix (unset: the local folder)")
        return url


class ArtifactNotFound(GroundworkError, KeyError):
    pass


class ArtifactStoreError(GroundworkError):
    """The artifact store cannot be used (unwritable folder, unreachable bucket, refused)."""


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> ArtifactStore:
        """The local folder, or the S3 store (with the folder as its cache) for an s3:// url."""
        if settings.url:
            return S3ArtifactStore.from_settings(settings)
        return cls(settings.root)

    def check(self) -> None:
        """Raise ArtifactStoreError unless artifacts can be written (for readiness probes)."""
        problem = writable_dir_problem(self.root)
        if problem is not None:
            raise ArtifactStoreError(
                f"artifact folder {self.root}: {problem}; set GROUNDWORK_ARTIFACTS__ROOT"
            )

    def presigned_url(self, sha256: str, ttl_s: int | None = None) -> str | None:
        """A URL anyone can download the artifact from for `ttl_s`; None for the local folder
        (the HTTP service signs its own links to it)."""
        return None

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
        """The stored image, decoded through the one guarded decoder: the store also holds web
        images, so a bomb or a broken file is `ImageRejected`, never a Pillow exception."""
        import io

        from PIL import Image

        from core.images import FILE_FORMATS, guarded, probe_image

        what = f"artifact {sha256[:12]}"
        data = self.path(sha256).read_bytes()
        probe_image(
            data, FILE_FORMATS, max_pixels=STORED_MAX_PIXELS, max_bytes=STORED_MAX_BYTES, what=what
        )
        with guarded(what), Image.open(io.BytesIO(data), formats=list(FILE_FORMATS)) as im:
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


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3 bucket, with the local folder as a write-through cache."""

    def __init__(
        self, root: Path, bucket: str, prefix: str, client: Any, *, presign_ttl_s: int = 3600
    ) -> None:
        super().__init__(root)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.presign_ttl_s = presign_ttl_s

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> S3ArtifactStore:
        import boto3
        from botocore.config import Config

        assert settings.url is not None
        bucket, _, prefix = settings.url.removeprefix("s3://").partition("/")
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                signature_version="s3v4",
            ),
        )
        return cls(settings.root, bucket, prefix, client, presign_ttl_s=settings.presign_ttl_s)

    # -- keys -------------------------------------------------------------------------------
    def _key(self, sha256: str, name: str) -> str:
        self._dir(sha256)  # validates the hash
        parts = (
            [self.prefix, sha256[:2], sha256[2:4], name]
            if self.prefix
            else [
                sha256[:2],
                sha256[2:4],
                name,
            ]
        )
        return "/".join(parts)

    def _fail(self, action: str, exc: Exception) -> ArtifactStoreError:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return ArtifactStoreError(
            f"artifact store {where}: {action} failed ({type(exc).__name__}: {exc}); check "
            "GROUNDWORK_ARTIFACTS__URL, __S3_ENDPOINT_URL and the credentials"
        )

    def _remote_name(self, sha256: str) -> str | None:
        """The bucket's object name of the artifact's bytes (its extension is not in the hash)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            listed = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(sha256, sha256), MaxKeys=10
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("listing", exc) from exc
        for item in listed.get("Contents", []):
            key = str(item["Key"])
            if not key.endswith(".json"):
                return key.rsplit("/", 1)[1]
        return None

    def _download(self, sha256: str, name: str) -> Path | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256, name))
            data = obj["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("download", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("download", exc) from exc
        path = self._dir(sha256) / name
        atomic_write(path, data, durable=False)  # a cache: the bucket holds the durable copy
        return path

    def _upload(self, sha256: str, name: str, data: bytes, media_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(sha256, name), Body=data, ContentType=media_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("upload", exc) from exc

    # -- the store ----------------------------------------------------------------------------
    def _find(self, sha256: str) -> Path | None:
        local = super()._find(sha256)
        if local is not None:
            return local
        name = self._remote_name(sha256)
        if name is None:
            return None
        self._download(sha256, f"{sha256}.json")  # metadata, when there is any
        return self._download(sha256, name)

    def put_bytes(
        self,
        data: bytes,
        media_type: str = "application/octet-stream",
        meta: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        ref = super().put_bytes(data, media_type, meta)
        name = f"{ref.sha256}{_EXT.get(media_type, '.bin')}"
        if self._remote_name(ref.sha256) is None:
            self._upload(ref.sha256, name, data, media_type)
        if meta is not None:
            merged = json.dumps(self.meta(ref.sha256), sort_keys=True).encode()
            self._upload(ref.sha256, f"{ref.sha256}.json", merged, "application/json")
        return ref.model_copy(update={"uri": f"s3://{self.bucket}/{self._key(ref.sha256, name)}"})

    def meta(self, sha256: str) -> dict[str, Any]:
        local = self._dir(sha256) / f"{sha256}.json"
        if not local.exists():
            self._download(sha256, f"{sha256}.json")
        return super().meta(sha256)

    def ref(self, sha256: str) -> ArtifactRef:
        ref = super().ref(sha256)
        name = self.path(sha256).name
        return ref.model_copy(update={"uri": f"s3://{self.bucket}/{self._key(sha256, name)}"})

    def presigned_url(self, sha256: str, ttl_s: int | None = None) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._remote_name(sha256)
        if name is None:
            raise ArtifactNotFound(f"artifact {sha256} not in s3://{self.bucket}/{self.prefix}")
        media_type = self.meta(sha256).get("media_type", "application/octet-stream")
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(sha256, name),
                    "ResponseContentType": media_type,
                },
                ExpiresIn=ttl_s or self.presign_ttl_s,
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("signing a download URL", exc) from exc
        return url

    def check(self) -> None:
        """The cache folder is writable and the bucket answers (one HEAD request)."""
        from botocore.exceptions import BotoCoreError, ClientError

        super().check()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("reaching the bucket", exc) from exc
