"""The completion marker: a small JSON file written last, after the model is in place.

Its presence (with matching contents) is what lets a later run skip the download.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from penstock.preload.digest import sha256_file
from penstock.preload.source import MARKER_NAME, TEMP_PREFIX

Kind = Literal["file", "archive"]

_VERSION = 1


@dataclass(frozen=True)
class InstalledFile:
    """A regular file the preloader put into the destination (path relative to it)."""

    path: str
    size: int


@dataclass(frozen=True)
class Marker:
    """What was preloaded into a destination directory.

    ``sha256`` is the digest of the fetched artifact (the archive itself for archives),
    whether or not the caller asked for it to be checked.
    """

    uri: str
    sha256: str
    kind: Kind
    files: tuple[InstalledFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "uri": self.uri,
            "sha256": self.sha256,
            "kind": self.kind,
            "files": [{"path": f.path, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_json(cls, data: object) -> Marker | None:
        """Parse a marker, or return ``None`` if ``data`` is not one we wrote."""
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return None
        uri, sha, kind, files = (data.get(k) for k in ("uri", "sha256", "kind", "files"))
        if not (isinstance(uri, str) and isinstance(sha, str) and isinstance(files, list)):
            return None
        if kind not in ("file", "archive"):
            return None
        parsed: list[InstalledFile] = []
        for item in files:
            if not isinstance(item, dict):
                return None
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
                return None
            if not _is_safe_relative(path):
                return None
            parsed.append(InstalledFile(path, size))
        return cls(uri, sha, "file" if kind == "file" else "archive", tuple(parsed))


def _is_safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


def marker_path(dest: Path) -> Path:
    return dest / MARKER_NAME


def read_marker(dest: Path) -> Marker | None:
    """The marker in ``dest``, or ``None`` if it is missing, unreadable or not ours."""
    try:
        text = marker_path(dest).read_text(encoding="utf-8")
        return Marker.from_json(json.loads(text))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def write_marker(dest: Path, marker: Marker) -> None:
    """Write the marker atomically (temporary file, fsync, rename, fsync directory)."""
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=TEMP_PREFIX, suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(marker.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, marker_path(dest))
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(dest)


def remove_marker(dest: Path) -> None:
    marker_path(dest).unlink(missing_ok=True)
    fsync_dir(dest)


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (best effort: not all filesystems allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def satisfied_by(marker: Marker | None, dest: Path, uri: str, sha256: str | None) -> str | None:
    """Why the model in ``dest`` can be used as is, or ``None`` if it must be fetched.

    It can when the marker is for the same ``uri`` and, if ``sha256`` is given, the same
    digest; every recorded file still exists with its recorded size; and, for a single
    file, its content still has the recorded digest.
    """
    if marker is None or marker.uri != uri:
        return None
    if sha256 is not None and marker.sha256 != sha256:
        return None
    if not marker.files:
        return None
    for item in marker.files:
        target = dest / item.path
        try:
            if not target.is_file() or target.stat().st_size != item.size:
                return None
        except OSError:
            return None
    if marker.kind == "file":
        try:
            if sha256_file(dest / marker.files[0].path) != marker.sha256:
                return None
        except OSError:
            return None
        return "sha256 re-verified"
    return f"{len(marker.files)} files present"


def installed_files(root: Path, names: Sequence[str] | None = None) -> tuple[InstalledFile, ...]:
    """Regular files under ``root`` (or under the given top-level ``names`` in it)."""
    out: list[InstalledFile] = []
    tops = [root / n for n in names] if names is not None else [root]
    for top in tops:
        if top.is_file() and not top.is_symlink():
            out.append(InstalledFile(top.relative_to(root).as_posix(), top.stat().st_size))
            continue
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                p = Path(dirpath, name)
                if p.is_file() and not p.is_symlink():
                    out.append(InstalledFile(p.relative_to(root).as_posix(), p.stat().st_size))
    return tuple(sorted(out, key=lambda f: f.path))
