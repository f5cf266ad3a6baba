"""Integration tests: preloading from file:// URIs and absolute paths."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from penstock.preload import PreloadError, preload

pytestmark = pytest.mark.integration


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "volume" / "models"


def test_file_uri_and_plain_path(store: Path, dest: Path) -> None:
    data = os.urandom(100_000)
    (store / "model.onnx").write_bytes(data)
    result = preload(f"file://{store}/model.onnx", dest, sha(data))
    assert result == dest / "model.onnx"
    assert result.read_bytes() == data
    other = dest.parent / "other"
    assert preload(str(store / "model.onnx"), other, sha(data)).read_bytes() == data


def test_rerun_skips_even_when_the_source_is_gone(store: Path, dest: Path) -> None:
    (store / "model.bin").write_bytes(b"weights")
    uri = f"file://{store}/model.bin"
    preload(uri, dest, sha(b"weights"))
    (store / "model.bin").unlink()
    assert preload(uri, dest, sha(b"weights")) == dest / "model.bin"
    assert preload(uri, dest, None) == dest / "model.bin"


def test_plain_tar_archive(store: Path, dest: Path) -> None:
    with tarfile.open(store / "model.tar", "w") as tf:
        for name, data in {"m/config.json": b"{}", "m/w.bin": b"123"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert preload(str(store / "model.tar"), dest, None) == dest
    assert (dest / "m" / "w.bin").read_bytes() == b"123"
    assert sorted(p.name for p in dest.iterdir()) == [".penstock-preload.json", "m"]


def test_missing_file(store: Path, dest: Path) -> None:
    with pytest.raises(PreloadError, match=rf"^file://{store}/nope\.bin does not exist$"):
        preload(f"file://{store}/nope.bin", dest, None)
    assert list(dest.iterdir()) == []


def test_directory_is_refused_with_advice(store: Path, dest: Path) -> None:
    (store / "model").mkdir()
    with pytest.raises(
        PreloadError, match="is a directory: point the URI at a single file, or at a tar"
    ):
        preload(str(store / "model"), dest, None)
    assert list(dest.iterdir()) == []


def test_digest_mismatch(store: Path, dest: Path) -> None:
    (store / "model.bin").write_bytes(b"weights")
    with pytest.raises(PreloadError, match=f"expected {sha(b'other')}, got {sha(b'weights')}"):
        preload(str(store / "model.bin"), dest, sha(b"other"))
    assert list(dest.iterdir()) == []


def test_bad_tar_leaves_nothing(store: Path, dest: Path) -> None:
    (store / "model.tgz").write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip")
    with pytest.raises(
        PreloadError, match=r"archive /.*/model\.tgz (is damaged|could not be unpacked)"
    ):
        preload(str(store / "model.tgz"), dest, None)
    assert list(dest.iterdir()) == []


def test_destination_that_is_a_file(store: Path, tmp_path: Path) -> None:
    (store / "model.bin").write_bytes(b"weights")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(PreloadError, match=f"destination {blocker} exists and is not a directory"):
        preload(str(store / "model.bin"), blocker, None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_destination(store: Path, tmp_path: Path) -> None:
    (store / "model.bin").write_bytes(b"weights")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PreloadError, match="is not writable"):
        preload(str(store / "model.bin"), ro, None)


def test_single_file_replaces_a_directory_of_the_same_name(store: Path, dest: Path) -> None:
    (store / "model").write_bytes(b"weights")
    (dest / "model" / "old").mkdir(parents=True)
    assert preload(str(store / "model"), dest, None).read_bytes() == b"weights"
    assert sorted(p.name for p in dest.iterdir()) == [".penstock-preload.json", "model"]


def test_invalid_digest_is_rejected_before_any_work(store: Path, dest: Path) -> None:
    with pytest.raises(PreloadError, match="sha256 'xyz' is not a SHA-256 digest"):
        preload(str(store / "missing.bin"), dest, "xyz")
    assert not dest.exists()
