"""Unit tests: the completion marker and the skip decision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from penstock.preload.marker import (
    InstalledFile,
    Marker,
    installed_files,
    marker_path,
    read_marker,
    satisfied_by,
    write_marker,
)

URI = "https://example.com/model.bin"


def _single_file(dest: Path, data: bytes = b"weights") -> Marker:
    (dest / "model.bin").write_bytes(data)
    marker = Marker(
        URI, hashlib.sha256(data).hexdigest(), "file", (InstalledFile("model.bin", len(data)),)
    )
    write_marker(dest, marker)
    return marker


def _archive(dest: Path) -> Marker:
    (dest / "m" / "sub").mkdir(parents=True)
    (dest / "m" / "config.json").write_bytes(b"{}")
    (dest / "m" / "sub" / "w.bin").write_bytes(b"123")
    marker = Marker("s3://b/m.tgz", "ab" * 32, "archive", installed_files(dest, ["m"]))
    write_marker(dest, marker)
    return marker


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    marker = _single_file(tmp_path)
    assert read_marker(tmp_path) == marker
    assert sorted(p.name for p in tmp_path.iterdir()) == [".penstock-preload.json", "model.bin"]


def test_installed_files_lists_regular_files_only(tmp_path: Path) -> None:
    marker = _archive(tmp_path)
    (tmp_path / "m" / "link").symlink_to("config.json")
    assert [f.path for f in installed_files(tmp_path, ["m"])] == [
        "m/config.json",
        "m/sub/w.bin",
    ]
    assert marker.files == (InstalledFile("m/config.json", 2), InstalledFile("m/sub/w.bin", 3))


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
    assert satisfied_by(marker, tmp_path, URI, marker.sha256) == "sha256 re-verified"
    assert satisfied_by(marker, tmp_path, URI, None) == "sha256 re-verified"


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


def test_archive_is_satisfied_while_its_files_exist(tmp_path: Path) -> None:
    marker = _archive(tmp_path)
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", "ab" * 32) == "2 files present"
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"12")  # truncated
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is None
    (tmp_path / "m" / "sub" / "w.bin").unlink()
    assert satisfied_by(marker, tmp_path, "s3://b/m.tgz", None) is None


def test_marker_json_is_readable_by_people(tmp_path: Path) -> None:
    _single_file(tmp_path)
    data = json.loads(marker_path(tmp_path).read_text())
    assert data["uri"] == URI
    assert data["files"] == [{"path": "model.bin", "size": 7}]
