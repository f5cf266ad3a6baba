"""``preload()``: fetch, verify, unpack and move a model into its destination atomically."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from penstock.preload.archive import Limits, extract_tar, is_tar_archive
from penstock.preload.digest import normalize_sha256
from penstock.preload.errors import PreloadError
from penstock.preload.fetch import fetch, human_size
from penstock.preload.lock import dest_lock
from penstock.preload.marker import (
    Kind,
    Marker,
    read_marker,
    remove_marker,
    satisfied_by,
    write_marker,
)
from penstock.preload.source import TEMP_PREFIX, Source, parse_uri, redact
from penstock.preload.tree import Installed, InstalledFile, mismatch, prune, scan

log = logging.getLogger("penstock.preload")


def preload(
    uri: str,
    dest: Path,
    sha256: str | None,
    *,
    timeout_seconds: float = 600.0,
    limits: Limits | None = None,
) -> Path:
    """Make the model at ``uri`` available in the directory ``dest``; return its path.

    A single file lands at ``dest/<last segment of the URI path>`` and that path is
    returned. A tar archive (``.tar``, ``.tar.gz``, ``.tgz``, ... or any file that is a tar
    archive) is unpacked into ``dest`` (its entries keep their paths) and ``dest`` is
    returned.

    The artifact is downloaded into a temporary file inside ``dest``, its SHA-256 checked
    against ``sha256`` (64 hex digits; ``None`` skips the check), unpacked into a temporary
    directory inside ``dest`` if it is an archive, and only then renamed into place. A
    marker (``dest/.penstock-preload.json``) is written last, with every installed file's
    size and SHA-256 and every symlink's target; when it shows that the same ``uri`` (and
    ``sha256``, if given) is in place and every file still has its digest (each one is
    re-hashed), nothing is fetched. Files of a previous preload that the new one does not
    have are removed, never through a symlink. On any failure a :class:`PreloadError` is
    raised and no temporary files remain.

    ``timeout_seconds`` bounds waiting for a concurrent preload into ``dest`` plus the
    transfer itself; ``limits`` the download size and what an archive may unpack to.
    """
    limits = limits or Limits()
    source = parse_uri(uri)
    expected = normalize_sha256(sha256)
    if not (timeout_seconds > 0 and math.isfinite(timeout_seconds)):
        raise PreloadError(f"timeout must be a positive number of seconds, got {timeout_seconds!r}")
    dest = _prepare_dest(Path(dest))
    deadline = time.monotonic() + timeout_seconds
    with dest_lock(dest, deadline) as locked:
        if locked:
            _remove_stale_temps(dest)
        previous = read_marker(dest)
        reason = satisfied_by(previous, dest, source.uri, expected)
        if previous is not None and reason is not None:
            log.info(
                "%s already holds %s (%s): skipping the download", dest, source.display, reason
            )
            return dest / previous.files[0].path if previous.kind == "file" else dest
        if previous is not None and previous.uri == source.uri:
            why = mismatch(dest, previous.installed) or "another digest expected"
            log.info("%s holds %s but it must be fetched again: %s", dest, source.display, why)
        elif previous is not None:
            log.info(
                "%s holds another preload (%s): it is replaced once the new model is verified",
                dest,
                redact(previous.uri),
            )
        log.info("fetching %s into %s", source.display, dest)
        return _fetch_and_install(
            source, dest, expected, previous, timeout_seconds, deadline, limits
        )


def _prepare_dest(dest: Path) -> Path:
    dest = dest.absolute()
    if dest.exists() and not dest.is_dir():
        raise PreloadError(f"destination {dest} exists and is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreloadError(
            f"cannot create destination directory {dest}: {exc.strerror or exc}"
        ) from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise PreloadError(
            f"destination directory {dest} is not writable by uid {os.getuid()}: mount the"
            " volume read-write (and set the pod's fsGroup if needed)"
        )
    return dest


def _remove_stale_temps(dest: Path) -> None:
    """Remove temporary entries a killed earlier run left behind (only under the lock)."""
    for entry in dest.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            log.info("removing %s left behind by an interrupted preload", entry.name)
            _remove(entry)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _temp_name(dest: Path, suffix: str) -> Path:
    return dest / f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}{suffix}"


def _fetch_and_install(
    source: Source,
    dest: Path,
    expected: str | None,
    previous: Marker | None,
    timeout_seconds: float,
    deadline: float,
    limits: Limits,
) -> Path:
    temps: list[Path] = []
    try:
        fd, name = tempfile.mkstemp(dir=dest, prefix=TEMP_PREFIX, suffix=".part")
        part = Path(name)
        temps.append(part)
        started = time.monotonic()
        with os.fdopen(fd, "wb") as out:
            fetched = fetch(
                source,
                out,
                timeout_seconds=timeout_seconds,
                deadline=deadline,
                max_bytes=limits.max_bytes,
            )
        log.info("downloaded %s in %.1fs", human_size(fetched.size), time.monotonic() - started)
        if expected is None:
            log.info("sha256 is %s (not checked: no expected digest given)", fetched.sha256)
        elif fetched.sha256 != expected:
            raise PreloadError(
                f"sha256 mismatch for {source.display}: expected {expected}, got"
                f" {fetched.sha256}; the download was discarded"
            )
        else:
            log.info("sha256 verified: %s", expected)

        if is_tar_archive(source.basename, part):
            unpacked = Path(tempfile.mkdtemp(dir=dest, prefix=TEMP_PREFIX, suffix=".d"))
            temps.append(unpacked)
            names = extract_tar(part, unpacked, display=source.display, limits=limits)
            part.unlink()  # free its space before the unpacked files are moved
            installed = scan(unpacked, names)
            _fsync_files(unpacked, installed.files)
            log.info(
                "unpacked tar archive: %d files, %s",
                len(installed.files),
                human_size(sum(f.size for f in installed.files)),
            )
            remove_marker(dest)
            _move_into_place(unpacked, dest, names, temps)
            kind: Kind = "archive"
            result = dest
        else:
            os.chmod(part, 0o644)  # mkstemp makes it 0600; the model server may be another uid
            installed = Installed((InstalledFile(source.basename, fetched.size, fetched.sha256),))
            names = [source.basename]
            remove_marker(dest)
            target = dest / source.basename
            if target.is_dir() and not target.is_symlink():
                aside = _temp_name(dest, ".old")
                os.rename(target, aside)
                temps.append(aside)
            os.replace(part, target)
            kind = "file"
            result = target

        if previous is not None:
            prune(dest, previous.installed, set(names))
        files, links, dirs = installed.files, installed.links, installed.dirs
        write_marker(dest, Marker(source.uri, fetched.sha256, kind, files, links, dirs))
        if kind == "file":
            log.info("installed %s", result)
        else:
            log.info("installed %d files into %s", len(installed.files), result)
        return result
    except OSError as exc:
        raise PreloadError(
            f"could not install {source.display} into {dest}: {exc.strerror or exc}"
        ) from None
    finally:
        for temp in temps:
            if temp.exists() or temp.is_symlink():
                _remove(temp)


def _fsync_files(root: Path, files: Iterable[InstalledFile]) -> None:
    for item in files:
        fd = os.open(root / item.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(src_root: Path, dest: Path, names: Iterable[str], temps: list[Path]) -> None:
    """Rename each top-level entry of ``src_root`` to ``dest``, replacing what is there.

    A file replaces a file atomically; a directory (or anything replacing one) first moves
    the old entry aside into a temporary name that the caller removes afterwards.
    """
    for name in names:
        src, dst = src_root / name, dest / name
        if os.path.lexists(dst) and (src.is_dir() or (dst.is_dir() and not dst.is_symlink())):
            aside = _temp_name(dest, ".old")
            os.rename(dst, aside)
            temps.append(aside)
        os.replace(src, dst)
