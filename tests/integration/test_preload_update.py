"""Integration tests: replacing one model by another, archives with symlinks, and size limits.

The class under test: whatever the old and the new archive hold (directories, files, symlinks
to files and to directories), an update leaves exactly the new model, verified; it never
deletes or reads through a symlink, and a later skip re-verifies every file.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from penstock.preload import PreloadError, preload
from penstock.preload.archive import Limits
from penstock.preload.marker import marker_path, read_marker, satisfied_by
from penstock.preload.source import MARKER_NAME

pytestmark = pytest.mark.integration

Tree = dict[str, Any]  # path -> bytes (a file) | ("link", target) | None (a directory)


def write_tar(path: Path, tree: Tree, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, value in tree.items():
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(value, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
                tf.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tf.addfile(info, io.BytesIO(value))
    return path


def entries(dest: Path) -> dict[str, Any]:
    """What dest holds, without following links (the marker left out)."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(dest).as_posix()
            if rel == MARKER_NAME:
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = None
            else:
                found[rel] = path.read_bytes()
    return found


def expected(tree: Tree) -> Tree:
    """The tree with its implied parent directories."""
    out = dict(tree)
    for name in tree:
        parts = name.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), None)
    return out


def install(tmp_path: Path, name: str, tree: Tree, dest: Path) -> Path:
    archive = write_tar(tmp_path / f"{name}.tar", tree)
    assert preload(str(archive), dest, None) == dest
    return archive


def test_the_reported_case_a_directory_symlink_in_the_old_archive(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    install(tmp_path, "v1", {"weights/a.bin": b"old", "current": ("link", "weights")}, dest)
    v2 = install(tmp_path, "v2", {"weights/a.bin": b"new"}, dest)
    assert entries(dest) == {"weights": None, "weights/a.bin": b"new"}
    assert satisfied_by(read_marker(dest), dest, str(v2), None)


def test_a_marker_of_the_old_version_listing_files_through_a_link(tmp_path: Path) -> None:
    """Markers written before this fix recorded 'current/a.bin' (walked through the link)."""
    dest = tmp_path / "models"
    install(tmp_path, "v1", {"weights/a.bin": b"old", "current": ("link", "weights")}, dest)
    marker_path(dest).write_text(
        json.dumps({"version": 1, "uri": "/old.tar", "sha256": "0" * 64, "kind": "archive",
                    "files": [{"path": "current/a.bin", "size": 3},
                              {"path": "weights/a.bin", "size": 3}]})
    )  # fmt: skip
    install(tmp_path, "v2", {"weights/a.bin": b"new"}, dest)
    assert entries(dest) == {"weights": None, "weights/a.bin": b"new"}


def test_a_skip_after_tampering_fetches_again(tmp_path: Path) -> None:
    dest = tmp_path / "models"
    archive = install(tmp_path, "v1", {"m/w.bin": b"123", "m/cur": ("link", "w.bin")}, dest)
    (dest / "m" / "w.bin").write_bytes(b"999")  # same size
    assert preload(str(archive), dest, None) == dest
    assert (dest / "m" / "w.bin").read_bytes() == b"123"
    os.unlink(dest / "m" / "cur")
    os.symlink("/etc/passwd", dest / "m" / "cur")
    preload(str(archive), dest, None)
    assert os.readlink(dest / "m" / "cur") == "w.bin"


# ----------------------------------------------------------------- random trees

NAMES = st.sampled_from(["a", "b", "w.bin", "cur", "sub"])


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """A small archive: directories, files and relative symlinks to entries of the tree."""
    tree: Tree = {}
    dirs = [""]
    for _ in range(draw(st.integers(1, 7))):
        parent = draw(st.sampled_from(dirs))
        path = posixpath.join(parent, draw(NAMES)) if parent else draw(NAMES)
        if any(path == p or p.startswith(path + "/") or (path.startswith(p + "/") and tree[p] is not None) for p in tree):  # fmt: skip
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "link"]))
        if kind == "dir":
            tree[path] = None
            dirs.append(path)
        elif kind == "file":
            tree[path] = draw(st.binary(min_size=1, max_size=20))
        else:
            others = [p for p in tree if p != path]
            if not others:
                continue
            target = draw(st.sampled_from(others))
            tree[path] = ("link", posixpath.relpath(target, posixpath.dirname(path) or "."))
    assume(any(isinstance(v, bytes) for v in tree.values()))
    return tree


@given(old=trees(), new=trees())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
def test_any_update_leaves_exactly_the_new_model_verified(
    tmp_path_factory: pytest.TempPathFactory, old: Tree, new: Tree
) -> None:
    tmp = tmp_path_factory.mktemp("update")
    dest = tmp / "models"
    try:
        install(tmp, "old", old, dest)
    except PreloadError:
        assume(False)  # an unsafe old archive never installed: nothing to update
    new_archive = write_tar(tmp / "new.tar", new)
    try:
        preload(str(new_archive), dest, None)
    except PreloadError:
        # refused (e.g. a link written through): the old model is left whole, and verified
        marker = read_marker(dest)
        assert marker is not None and satisfied_by(marker, dest, str(tmp / "old.tar"), None)
        return
    assert entries(dest) == expected(new)
    marker = read_marker(dest)
    assert satisfied_by(marker, dest, str(new_archive), None) is not None
    before = entries(dest)
    preload(str(new_archive), dest, None)  # a skip changes nothing
    assert entries(dest) == before


# ----------------------------------------------------------------- limits


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        return n


def bomb(path: Path, size: int, files: int = 1) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        for index in range(files):
            info = tarfile.TarInfo(f"zeros-{index}.bin")
            info.size = size
            tf.addfile(info, io.BufferedReader(Zeros(size)))
    return path


@pytest.mark.parametrize(
    ("limits", "size", "files", "needle"),
    [
        (Limits(max_bytes=2**20), 2 * 2**20, 1, "unpacks to more than 1048576 bytes"),
        (Limits(max_bytes=2**20), 2**19, 3, "unpacks to more than 1048576 bytes"),
        (Limits(max_files=5), 1, 6, "more than 5 entries"),
    ],
)
def test_archives_past_a_limit_are_refused_and_leave_nothing(
    tmp_path: Path, limits: Limits, size: int, files: int, needle: str
) -> None:
    archive = bomb(tmp_path / "bomb.tar.gz", size, files)
    dest = tmp_path / "models"
    with pytest.raises(PreloadError, match=needle):
        preload(str(archive), dest, None, limits=limits)
    assert list(dest.iterdir()) == []


def test_a_small_archive_expanding_a_thousand_times_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("penstock.preload.archive.RATIO_FLOOR_BYTES", 2**20)
    archive = bomb(tmp_path / "bomb.tar.gz", 8 * 2**20)
    assert archive.stat().st_size < 20_000
    dest = tmp_path / "models"
    with pytest.raises(PreloadError, match="unpacks to more than 100 times its size"):
        preload(str(archive), dest, None)
    assert list(dest.iterdir()) == []
    ok = Limits(max_expansion_ratio=0)
    assert preload(str(archive), dest, None, limits=ok) == dest


def test_a_download_past_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(os.urandom(3 * 2**20))
    dest = tmp_path / "models"
    with pytest.raises(PreloadError, match="is larger than 1048576 bytes"):
        preload(str(tmp_path / "model.bin"), dest, None, limits=Limits(max_bytes=2**20))
    assert list(dest.iterdir()) == []
