"""Unit tests: the completion marker and the skip decision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from penstock.preload.marker import (
    InstalledFile,
    InstalledLink,
    Marker,
    marker_path,
    read_marker,
    satisfied_by,
    write_marker,
)
from penstock.preload.tree import scan

URI = "https://example.com/model.bin"


def _single_file(dest: Path, data: bytes = b"weights") -> Marker:
    (dest / "model.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    marker = Marker(URI, digest, "file", (InstalledFile("model.bin", len(data), digest),))
    write_marker(dest, marker)
    return marker


def _archive(dest: Path) -> Marker:
    (dest / "m" / "sub").mkdir(parents=True)
    (dest / "m" / "config.json").write_bytes(b"{}")
    (dest / "m" / "sub" / "w.bin").write_bytes(b"123")
    (dest / "m" / "current").symlink_to("sub")
    installed = scan(dest, ["m"])
    marker = Marker(
        "s3://b/m.tgz", "ab" * 32, "archive", installed.files, installed.links, installed.dirs
    )
    write_marker(dest, marker)
    return marker


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    marker = _single_file(tmp_path)
    assert read_marker(tmp_path) == marker
    assert sorted(p.name for p in tmp_path.iterdir()) == [".penstock-preload.json", "model.bin"]


def test_scan_lists_files_with_digests_and_links_never_followed(tmp_path: Path) -> None:
    marker = _archive(tmp_path)
    (tmp_path / "top-link").symlink_to("m")
    assert marker.files == (
        InstalledFile("m/config.json", 2, hashlib.sha256(b"{}").hexdigest()),
        InstalledFile("m/sub/w.bin", 3, hashlib.sha256(b"123").hexdigest()),
    )
    assert marker.links == (InstalledLink("m/current", "sub"),)
    assert marker.dirs == ("m", "m/sub")
    assert scan(tmp_path, ["top-link"]).links == (InstalledLink("top-link", "m"),)
    assert scan(tmp_path, ["top-link"]).files == ()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 99, "uri": "x", "sha256": "y", "kind": "file", "files": []}',
        '{"version": 1, "uri": 1, "sha256": "y", "kind": "file", "files": []}',
        '{"version": 1, "uri": "x", "sha256": "y", "kind": "tree", "files": []}',
        '{"version": 1, "uri": "x", "sha256": "y", "kind": "file", "files": [{"path": "../x", "size": 1}]}',
        '{"version": 1, "uri": "x", "sha256": "y", "kind": "file", "files": [{"path": "/etc/passwd", "size": 1}]}',
        '{"version": 1, "uri": "x", "sha256": "y", "kind": "file", "files": [{"path": "a", "size": true}]}',
    ],
)
def test_unreadable_or_foreign_markers_are_ignored(tmp_path: Path, content: str) -> None:
    marker_path(tmp_path).write_text(content)
    assert read_marker(tmp_path) is None


def test_missing_marker(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    assert satisfied_by(None, tmp_path, URI, None) is None


def test_single_file_is_satisfied_with_and_without_digest(tmp_path: Path) -> None:
    marker = _single_file(tmp_path)
    assert satisfied_by(marker, tmp_path, URI, marker.sha256) == "1 file re-verified by sha256"
    assert satisfied_by(marker, tmp_path, URI, None) == "1 file re-verified by sha256"


def test_other_uri_or_digest_is_not_satisfied(tmp_path: Path) -> None:
    marker = _single_file(tmp_path)
    assert satisfied_by(marker, tmp_path, URI + "?v=2", None) is None
    assert satisfied_by(marker, tmp_path, URI, "0" * 64) is None


def test_single_file_changed_in_place_is_not_satisfied(tmp_path: Path) -> None:
    marker = _single_file(tmp_path, b"weights")
    (tmp_path / "model.bin").write_bytes(b"WEIGHTS")  # same size, other content
    assert satisfied_by(marker, tmp_path, URI, None) is None


def test_single_file_missing_is_not_satisfied(tmp_path: Path) -> None:
    marker = _single_file(tmp_path)
    (tmp_path / "model.bin").unlink()
    assert satisfied_by(marker, tmp_path, URI, marker.sha256) is None


def test_archive_is_satisfied_while_its_files_are_intact(tmp_path: Path) -> None:
    marker = _archive(tmp_path)
    assert (
        satisfied_by(marker, tmp_path, "s3://b/m.tgz", "ab" * 32) == "2 files re-verified by sha256"
    )
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"12")  # truncated
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is None
    (tmp_path / "m" / "sub" / "w.bin").unlink()
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is None


def test_marker_json_is_readable_by_people(tmp_path: Path) -> None:
    _single_file(tmp_path)
    data = json.loads(marker_path(tmp_path).read_text())
    assert data["uri"] == URI
    assert data["version"] == 2
    assert data["files"] == [
        {"path": "model.bin", "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}
    ]
    assert data["links"] == []
    assert data["dirs"] == []


def _tamper_same_size(dest: Path) -> None:
    (dest / "m" / "sub" / "w.bin").write_bytes(b"124")


def _file_becomes_a_link_to_a_copy(dest: Path) -> None:
    (dest / "copy.bin").write_bytes(b"123")
    (dest / "m" / "sub" / "w.bin").unlink()
    (dest / "m" / "sub" / "w.bin").symlink_to("../../copy.bin")


def _parent_becomes_a_link_to_a_copy(dest: Path) -> None:
    (dest / "elsewhere").mkdir()
    (dest / "elsewhere" / "w.bin").write_bytes(b"123")
    for child in (dest / "m" / "sub").iterdir():
        child.unlink()
    (dest / "m" / "sub").rmdir()
    (dest / "m" / "sub").symlink_to("../elsewhere")


def _link_retargeted(dest: Path) -> None:
    (dest / "m" / "current").unlink()
    (dest / "m" / "current").symlink_to("/etc")


def _link_becomes_a_directory(dest: Path) -> None:
    (dest / "m" / "current").unlink()
    (dest / "m" / "current").mkdir()


@pytest.mark.parametrize(
    "tamper",
    [
        _tamper_same_size,
        _file_becomes_a_link_to_a_copy,
        _parent_becomes_a_link_to_a_copy,
        _link_retargeted,
        _link_becomes_a_directory,
    ],
)
def test_a_skip_re_verifies_every_installed_file_and_link(tmp_path: Path, tamper: Any) -> None:
    marker = _archive(tmp_path)
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is not None
    tamper(tmp_path)
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is None


def test_a_marker_of_version_1_is_read_but_never_trusted(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    marker_path(tmp_path).write_text(
        json.dumps({"version": 1, "uri": URI, "sha256": digest, "kind": "file",
                    "files": [{"path": "model.bin", "size": 7}]})
    )  # fmt: skip
    old = read_marker(tmp_path)
    assert old is not None and old.files == (InstalledFile("model.bin", 7),)
    assert satisfied_by(old, tmp_path, URI, digest) is None
