"""The completion marker: a small JSON file written last, after the model is in place.

It records the artifact (URI and SHA-256) and everything installed: each regular file with
its size and SHA-256, each symlink with its target. A later run skips the download only when
the marker is for the same artifact *and* every recorded file still has its digest (reached
without symlinks) and every link its target: the archive's digest alone says nothing about
what is on the volume now.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from penstock.preload.source import MARKER_NAME, TEMP_PREFIX
from penstock.preload.tree import Installed, InstalledFile, InstalledLink, mismatch

__all__ = ["InstalledFile", "InstalledLink", "Kind", "Marker", "read_marker", "satisfied_by"]

Kind = Literal["file", "archive"]

_VERSION = 2
_READABLE = (1, 2)  # version 1 had no digests and no links: read to prune, never to skip


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
    links: tuple[InstalledLink, ...] = ()
    dirs: tuple[str, ...] = ()

    @property
    def installed(self) -> Installed:
        return Installed(self.files, self.links, self.dirs)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "uri": self.uri,
            "sha256": self.sha256,
            "kind": self.kind,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "links": [{"path": link.path, "target": link.target} for link in self.links],
            "dirs": list(self.dirs),
        }

    @classmethod
    def from_json(cls, data: object) -> Marker | None:
        """Parse a marker, or return ``None`` if ``data`` is not one we wrote."""
        if not isinstance(data, dict) or data.get("version") not in _READABLE:
            return None
        uri, sha, kind, files = (data.get(k) for k in ("uri", "sha256", "kind", "files"))
        links, dirs = data.get("links", []), data.get("dirs", [])
        if not (isinstance(uri, str) and isinstance(sha, str) and isinstance(files, list)):
            return None
        if kind not in ("file", "archive") or not isinstance(links, list):
            return None
        if not isinstance(dirs, list) or not all(
            isinstance(d, str) and _is_safe_relative(d) for d in dirs
        ):
            return None
        parsed: list[InstalledFile] = []
        for item in files:
            if not isinstance(item, dict):
                return None
            path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
            if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
                return None
            if not _is_safe_relative(path) or not (digest is None or isinstance(digest, str)):
                return None
            parsed.append(InstalledFile(path, size, digest))
        parsed_links: list[InstalledLink] = []
        for item in links:
            if not isinstance(item, dict):
                return None
            path, target = item.get("path"), item.get("target")
            if not (isinstance(path, str) and _is_safe_relative(path) and isinstance(target, str)):
                return None
            parsed_links.append(InstalledLink(path, target))
        return cls(
            uri,
            sha,
            "file" if kind == "file" else "archive",
            tuple(parsed),
            tuple(parsed_links),
            tuple(dirs),
        )


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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
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
    artifact digest; and every recorded file, reached through real directories, is a regular
    file with its recorded size and SHA-256, and every recorded link points where it did.
    """
    if marker is None or marker.uri != uri or not marker.files:
        return None
    if sha256 is not None and marker.sha256 != sha256:
        return None
    if marker.kind == "file" and marker.files[0].sha256 != marker.sha256:
        return None
    if mismatch(dest, marker.installed) is not None:
        return None
    count = len(marker.files)
    return f"{count} file{'s' if count != 1 else ''} re-verified by sha256"
