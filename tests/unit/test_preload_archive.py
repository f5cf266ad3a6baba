"""Unit tests: recognising tar archives and unpacking them safely."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from penstock.preload import PreloadError, archive
from penstock.preload.archive import Limits, _check_size, extract_tar, is_tar_archive


def _tar(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz"
) -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


@pytest.fixture(autouse=True, params=["data-filter", "own-rules"])
def extraction_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case twice: with tarfile's "data" filter (Python >= 3.11.4) and with the rules
    archive.py applies itself on an older 3.11 (Debian bookworm's 3.11.2, in the image)."""
    if request.param == "data-filter" and not archive.HAS_DATA_FILTER:
        pytest.skip("this Python's tarfile has no extraction filters")
    monkeypatch.setattr(archive, "HAS_DATA_FILTER", request.param == "data-filter")


def test_good_archive_is_unpacked_with_its_layout(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "m.tgz",
        [
            (_dir("model"), None),
            (_file("model/config.json"), b"{}"),
            (_file("model/sub/w.bin"), b"weights"),
            (_link("model/alias.bin", "sub/w.bin", tarfile.SYMTYPE), None),
            (_file("README"), b"hi"),
        ],
    )
    into = tmp_path / "out"
    into.mkdir()
    assert extract_tar(archive, into, display="m.tgz") == ["README", "model"]
    assert (into / "model" / "sub" / "w.bin").read_bytes() == b"weights"
    assert (into / "model" / "alias.bin").read_bytes() == b"weights"


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_is_tar_archive_by_content(tmp_path: Path, mode: str) -> None:
    archive = _tar(tmp_path / "model.bin", [(_file("a"), b"1")], mode=mode)
    assert is_tar_archive("model.bin", archive)


def test_is_tar_archive_by_name_and_not(tmp_path: Path) -> None:
    plain = tmp_path / "blob"
    plain.write_bytes(b"\x00" * 2048 + b"not a tar")
    gz = tmp_path / "blob.gz"
    gz.write_bytes(gzip.compress(b"just text, not a tar"))
    assert is_tar_archive("model.tar.gz", plain)  # by name: unpacking then reports the damage
    assert is_tar_archive("MODEL.TGZ", plain)
    assert not is_tar_archive("model.bin", plain)  # zeros read as an *empty* tar: not one
    assert not is_tar_archive("model.gz", gz)
    assert not is_tar_archive("weights.safetensors", tmp_path / "missing")


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([(_file("/etc/evil"), b"x")], "absolute path: '/etc/evil'"),
        ([(_file("../evil"), b"x")], "'..' component: '../evil'"),
        ([(_file("model/../../evil"), b"x")], "'..' component"),
        (
            [(_file("ok"), b"x"), (_link("escape", "/etc/passwd", tarfile.SYMTYPE), None)],
            "unsafe entry",
        ),
        (
            [(_file("ok"), b"x"), (_link("escape", "../../outside", tarfile.SYMTYPE), None)],
            "unsafe entry",
        ),
        (
            [(_file("ok"), b"x"), (_link("hard", "../outside", tarfile.LNKTYPE), None)],
            "'..' component|unsafe entry",
        ),
        (
            [(_file("ok"), b"x"), (_link("hard", "/etc/passwd", tarfile.LNKTYPE), None)],
            "absolute path|unsafe entry",
        ),
        ([(_file("ok"), b"x"), (_link("dev", "", tarfile.CHRTYPE), None)], "device or fifo"),
        ([(_file("ok"), b"x"), (_link("pipe", "", tarfile.FIFOTYPE), None)], "device or fifo"),
        ([(_file(".penstock-preload.json"), b"{}")], "reserved"),
        ([(_dir("empty"), None)], "contains no files"),
    ],
)
def test_unsafe_or_useless_archives_are_rejected(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], expected: str
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", members)
    into = tmp_path / "out"
    into.mkdir()
    with pytest.raises(PreloadError, match=expected):
        extract_tar(archive, into, display="s3://b/evil.tar.gz")
    assert not (tmp_path / "evil").exists()
    assert not Path("/etc/evil").exists()


def test_symlink_then_write_through_it_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(
        tmp_path / "evil.tar",
        [
            (_link("d", str(outside), tarfile.SYMTYPE), None),
            (_file("d/pwned"), b"x"),
        ],
        mode="w",
    )
    into = tmp_path / "out"
    into.mkdir()
    with pytest.raises(PreloadError, match=r"s3://b/evil\.tar"):
        extract_tar(archive, into, display="s3://b/evil.tar")
    assert not (outside / "pwned").exists()


def test_damaged_archives_are_reported(tmp_path: Path) -> None:
    good = _tar(tmp_path / "m.tar.gz", [(_file("w.bin"), os.urandom(100_000))])
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "g.tar.gz"
    garbage.write_bytes(b"this is not an archive at all")
    for bad in (truncated, garbage):
        into = tmp_path / f"out-{bad.name}"
        into.mkdir()
        with pytest.raises(PreloadError, match=f"archive {bad.name} .*(damaged|not a tar)"):
            extract_tar(bad, into, display=bad.name)


def test_the_reported_bomb_is_refused_by_the_default_limits() -> None:
    """A 1 MB archive expanding to 1.1 GB, with the defaults (10Gi, 10000 entries, 100x)."""
    with pytest.raises(PreloadError, match="more than 100 times its size"):
        _check_size("bomb.tgz", Limits(), 1, 1_100_000_000, 1_000_000)
    _check_size("model.tgz", Limits(), 1, 1_100_000_000, 900_000_000)  # real weights: fine
    _check_size("vocab.tgz", Limits(), 1, 200 * 2**20, 2**20)  # under the ratio floor: fine
    with pytest.raises(PreloadError, match="more than 10737418240 bytes"):
        _check_size("huge.tar", Limits(), 1, 11 * 2**30, 11 * 2**30)
    with pytest.raises(PreloadError, match="more than 10000 entries"):
        _check_size("many.tar", Limits(), 10_001, 0, 10**7)
