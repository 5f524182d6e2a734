"""The S3-compatible artifact backend (issue 23) against moto's server on loopback: any replica
reads what another wrote, downloads are presigned URLs, failures are one clear line."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.artifacts import (
    ArtifactNotFound,
    ArtifactSettings,
    ArtifactStore,
    ArtifactStoreError,
    S3ArtifactStore,
)

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key; nothing from the developer's AWS profile is read.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _settings(root: Path, endpoint: str, url: str = "s3://gw-bucket/team/a") -> ArtifactSettings:
    return ArtifactSettings(root=root, url=url, s3_endpoint_url=endpoint, s3_region="us-east-1")


@pytest.fixture
def bucket(s3_endpoint: str, tmp_path: Path) -> str:
    store = ArtifactStore.from_settings(_settings(tmp_path / "setup", s3_endpoint))
    assert isinstance(store, S3ArtifactStore)
    existing = {b["Name"] for b in store.client.list_buckets().get("Buckets", [])}
    if "gw-bucket" not in existing:
        store.client.create_bucket(Bucket="gw-bucket")
    return "gw-bucket"


def test_the_url_picks_the_backend(tmp_path: Path, s3_endpoint: str) -> None:
    assert type(ArtifactStore.from_settings(ArtifactSettings(root=tmp_path))) is ArtifactStore
    s3 = ArtifactStore.from_settings(_settings(tmp_path, s3_endpoint))
    assert isinstance(s3, S3ArtifactStore) and (s3.bucket, s3.prefix) == ("gw-bucket", "team/a")
    with pytest.raises(ValueError, match="s3://bucket"):
        ArtifactSettings(root=tmp_path, url="gs://other")


def test_a_replica_reads_what_another_wrote(bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    writer = ArtifactStore.from_settings(_settings(tmp_path / "replica-1", s3_endpoint))
    reader = ArtifactStore.from_settings(_settings(tmp_path / "replica-2", s3_endpoint))
    image = Image.new("RGB", (8, 6), (200, 10, 30))
    ref = writer.put_image(image, meta={"prompt": "red"})
    assert ref.uri.startswith(f"s3://{bucket}/team/a/")
    assert not (reader.root / ref.sha256[:2]).exists()  # nothing local yet
    assert reader.exists(ref.sha256)
    assert reader.meta(ref.sha256)["prompt"] == "red"
    got = reader.open_image(ref.sha256)
    assert got.size == (8, 6) and got.getpixel((0, 0)) == (200, 10, 30)
    path = reader.path(ref.sha256)  # callers that need a file get the cached copy
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    assert reader.ref(ref.sha256).uri == ref.uri


def test_presigned_download_works_without_credentials(
    bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    store = ArtifactStore.from_settings(_settings(tmp_path, s3_endpoint))
    data = b"\x89PNG fake bytes for a download"
    ref = store.put_bytes(data, "image/png", {"width": 1, "height": 1})
    url = store.presigned_url(ref.sha256, ttl_s=60)
    assert url is not None and "X-Amz-Signature" in url
    resp = httpx.get(url)  # a plain client: the signature is the only credential
    assert resp.status_code == 200 and resp.content == data
    assert resp.headers["content-type"] == "image/png"
    assert ArtifactStore(tmp_path / "local").presigned_url(ref.sha256) is None


def test_missing_artifact_and_dead_endpoint_are_clear(
    bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    store = ArtifactStore.from_settings(_settings(tmp_path, s3_endpoint))
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(ArtifactNotFound):
        store.path(missing)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    broken = ArtifactStore.from_settings(_settings(tmp_path / "b", dead))
    with pytest.raises(ArtifactStoreError, match="s3://gw-bucket/team/a.*GROUNDWORK_ARTIFACTS"):
        broken.check()
    with pytest.raises(ArtifactStoreError, match="upload|listing"):
        broken.put_bytes(b"x", "image/png")


def test_a_missing_bucket_fails_the_readiness_check(s3_endpoint: str, tmp_path: Path) -> None:
    store = ArtifactStore.from_settings(_settings(tmp_path, s3_endpoint, "s3://no-such-bucket"))
    with pytest.raises(ArtifactStoreError, match="reaching the bucket"):
        store.check()
