"""Integration tests: preloading from s3:// against a real local moto server."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import server as moto_server

from penstock.preload import PreloadError, preload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A boto3 client for the moto server; the environment points the preloader at it."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_object(s3: Any, bucket: str, tmp_path: Path) -> None:
    data = b"weights" * 100_000
    s3.put_object(Bucket=bucket, Key="minilm/model.bin", Body=data)
    result = preload(f"s3://{bucket}/minilm/model.bin", tmp_path, sha(data))
    assert result == tmp_path / "model.bin"
    assert result.read_bytes() == data


def test_archive_and_rerun_skip(s3: Any, bucket: str, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"minilm-l6/config.json": b"{}", "minilm-l6/w.bin": b"1234"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    s3.put_object(Bucket=bucket, Key="minilm-l6.tar.gz", Body=archive)
    uri = f"s3://{bucket}/minilm-l6.tar.gz"
    assert preload(uri, tmp_path, sha(archive)) == tmp_path
    assert (tmp_path / "minilm-l6" / "w.bin").read_bytes() == b"1234"
    # Remove the object: a second run must not need it.
    s3.delete_object(Bucket=bucket, Key="minilm-l6.tar.gz")
    assert preload(uri, tmp_path, sha(archive)) == tmp_path


def test_missing_object(s3: Any, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(PreloadError, match=f"s3://{bucket}/nope.bin does not exist"):
        preload(f"s3://{bucket}/nope.bin", tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket(s3: Any, tmp_path: Path) -> None:
    with pytest.raises(PreloadError, match=r"s3://no-such-bucket-x/m\.bin does not exist"):
        preload("s3://no-such-bucket-x/m.bin", tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_key_prefix_is_refused_with_advice(s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="minilm/config.json", Body=b"{}")
    with pytest.raises(PreloadError, match=f"s3://{bucket}/minilm is a key prefix"):
        preload(f"s3://{bucket}/minilm", tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_digest_mismatch(s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="m.bin", Body=b"tampered")
    with pytest.raises(PreloadError, match="sha256 mismatch"):
        preload(f"s3://{bucket}/m.bin", tmp_path, sha(b"original"))
    assert list(tmp_path.iterdir()) == []


def test_no_credentials(
    s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.put_object(Bucket=bucket, Key="m.bin", Body=b"x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(
        PreloadError, match=f"no usable AWS credentials to fetch s3://{bucket}/m.bin"
    ):
        preload(f"s3://{bucket}/m.bin", tmp_path, None, timeout_seconds=30)
    assert list(tmp_path.iterdir()) == []
