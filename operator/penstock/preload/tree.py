"""What a preload installed, walked, verified and removed without ever following a symlink.

A model archive may hold symlinks (``current -> weights-v2``); the preloader records them as
links and never reads, checks or deletes anything *through* one. That is what keeps an update
from deleting the new model's files through the old model's directory symlink, and a skip
from trusting a file that a symlink now points elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("penstock.preload")

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class InstalledFile:
    """A regular file the preloader put into the destination (path relative to it).

    ``sha256`` is its content's digest; ``None`` only in markers of older versions.
    """

    path: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class InstalledLink:
    """A symlink the preloader put into the destination, and what it points to."""

    path: str
    target: str


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Installed:
    """Everything one preload put into the destination."""

    files: tuple[InstalledFile, ...]
    links: tuple[InstalledLink, ...] = ()
    dirs: tuple[str, ...] = ()


def scan(root: Path, names: Sequence[str] | None = None) -> Installed:
    """Regular files (with digests), symlinks and directories under ``root`` (or its
    top-level ``names``)."""
    files: list[InstalledFile] = []
    links: list[InstalledLink] = []
    dirs: list[str] = []

    def visit(path: Path) -> None:
        info = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            links.append(InstalledLink(rel, os.readlink(path)))
        elif stat.S_ISREG(info.st_mode):
            files.append(InstalledFile(rel, info.st_size, _digest(path)))
        elif stat.S_ISDIR(info.st_mode):
            dirs.append(rel)
            for child in sorted(os.listdir(path)):
                visit(path / child)

    for name in names if names is not None else sorted(os.listdir(root)):
        visit(root / name)
    return Installed(
        tuple(sorted(files, key=lambda f: f.path)),
        tuple(sorted(links, key=lambda link: link.path)),
        tuple(sorted(dirs)),
    )


def first_link(dest: Path, rel: str) -> int | None:
    """The index of the first component of ``rel`` (under ``dest``) that is a symlink or not
    there, among its parents; ``None`` when every parent is a real directory."""
    parts = rel.split("/")
    current = dest
    for index, part in enumerate(parts[:-1]):
        current = current / part
        try:
            if not stat.S_ISDIR(current.lstat().st_mode):
                return index
        except OSError:
            return index
    return None


def mismatch(dest: Path, installed: Installed) -> str | None:
    """Why what ``dest`` holds is not what was installed, or ``None``.

    Every file is re-hashed, reached through real directories only; every link must still
    point where it pointed, every directory still be one.
    """
    for rel in installed.dirs:
        if first_link(dest, rel + "/.") is not None:
            return f"{rel}: not a directory any more"
    for item in installed.files:
        path = dest / item.path
        if item.sha256 is None:
            return f"{item.path}: no digest recorded"
        if first_link(dest, item.path) is not None:
            return f"{item.path}: a parent directory is missing or a symlink"
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_size != item.size:
                return f"{item.path}: missing, not a regular file or of another size"
            if _digest(path) != item.sha256:
                return f"{item.path}: content changed (sha256)"
        except OSError as exc:
            return f"{item.path}: {exc.strerror or exc}"
    for link in installed.links:
        if first_link(dest, link.path) is not None:
            return f"{link.path}: a parent directory is missing or a symlink"
        try:
            if os.readlink(dest / link.path) != link.target:
                return f"{link.path}: points elsewhere"
        except OSError:
            return f"{link.path}: not a symlink any more"
    return None


def prune(dest: Path, previous: Installed, replaced: set[str]) -> None:
    """Remove what a previous preload installed under top-level names not in ``replaced``.

    Only entries reached through real directories are removed, and only when they are still
    what was recorded (a file a file, a link a link, an empty directory); a symlink met on
    the way is removed itself (it was the previous model's), never followed. Directories
    emptied by this go too.
    """
    recorded = {f.path for f in previous.files} | {link.path for link in previous.links}
    for rel in sorted(recorded | set(previous.dirs), reverse=True):
        parts = rel.split("/")
        if parts[0] in replaced:
            continue  # that whole tree was replaced by the new model
        index = first_link(dest, rel)
        if index is not None:
            _unlink_if_link(dest.joinpath(*parts[: index + 1]))
            continue
        path = dest / rel
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            path.unlink()
            _remove_empty_parents(dest, path.parent)
        elif stat.S_ISDIR(mode):
            _remove_empty_parents(dest, path)


def _unlink_if_link(path: Path) -> None:
    try:
        if stat.S_ISLNK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _remove_empty_parents(dest: Path, parent: Path) -> None:
    while parent != dest and parent.is_relative_to(dest):
        try:
            parent.rmdir()  # only succeeds when empty (and never follows a symlink)
        except OSError:
            return
        parent = parent.parent
