"""Recognising tar archives and unpacking them safely."""

from __future__ import annotations

import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from penstock.preload.errors import PreloadError
from penstock.preload.source import MARKER_NAME, TEMP_PREFIX

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

GIB = 1024**3
DEFAULT_MAX_BYTES = 10 * GIB  # the model volume's default size limit
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_EXPANSION_RATIO = 100.0
RATIO_FLOOR_BYTES = 256 * 1024**2  # below this much, any compression ratio is fine


@dataclass(frozen=True)
class Limits:
    """How much an artifact may become on disk (flags of ``penstock preload``).

    ``max_bytes`` bounds the download and the unpacked total (the sum of the regular files'
    sizes), ``max_files`` the number of archive entries (directories and links included),
    ``max_expansion_ratio`` the unpacked total over the archive's size once past
    :data:`RATIO_FLOOR_BYTES` (0 disables that check).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_expansion_ratio: float = DEFAULT_MAX_EXPANSION_RATIO


# Everything a damaged or truncated (compressed) tar stream can raise while being read.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


def named_like_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def is_tar_archive(name: str, path: Path) -> bool:
    """Whether the fetched file is to be unpacked: by its name, or by its content."""
    if named_like_tar(name):
        return True
    # Like tarfile.is_tarfile(), but an "archive" without a single entry does not count:
    # any file starting with 1 KiB of zero bytes reads as an empty tar archive.
    try:
        with tarfile.open(path, mode="r:*") as tf:
            return tf.next() is not None
    except _READ_ERRORS:
        return False


def _check_member(display: str, member: tarfile.TarInfo) -> None:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute():
        raise PreloadError(f"archive {display} has an entry with an absolute path: {name!r}")
    if ".." in path.parts:
        raise PreloadError(f"archive {display} has an entry with a '..' component: {name!r}")
    if member.isdev() or member.isfifo():
        raise PreloadError(f"archive {display} has a device or fifo entry: {name!r}")
    top = path.parts[0] if path.parts else ""
    if top == MARKER_NAME or top.startswith(TEMP_PREFIX):
        raise PreloadError(
            f"archive {display} has an entry {name!r} whose name is reserved for the"
            " preloader's own files"
        )


# tarfile's extraction filters (PEP 706) arrived in 3.11.4; Debian bookworm's Python, which the
# Penstock image runs, is 3.11.2. Without them the same rules are applied here.
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def _without_filter(display: str, member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the "data" filter does, for a Python without it: no link may point outside the
    destination, no setuid/setgid/sticky or group/other write bits, no owner from the archive."""
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
        parts: list[str] = []
        for part in (base / target).parts if not target.is_absolute() else ("/",):
            if part in ("/", "..") and not parts:
                raise PreloadError(
                    f"archive {display} has an unsafe entry: link {member.name!r} points"
                    f" outside the model directory ({member.linkname!r})"
                )
            if part == "..":
                parts.pop()
            elif part != ".":
                parts.append(part)
    member.mode &= 0o755
    member.uid = member.gid = os.getuid()
    member.uname = member.gname = ""
    return member


def _check_size(display: str, limits: Limits, entries: int, total: int, packed: int) -> None:
    if entries > limits.max_files:
        raise PreloadError(
            f"archive {display} has more than {limits.max_files} entries (limit: --max-files)"
        )
    if total > limits.max_bytes:
        raise PreloadError(
            f"archive {display} unpacks to more than {limits.max_bytes} bytes"
            " (limit: --max-bytes, the model volume's sizeLimit in a cluster)"
        )
    ratio = limits.max_expansion_ratio
    if ratio > 0 and total > RATIO_FLOOR_BYTES and total > ratio * max(packed, 1):
        raise PreloadError(
            f"archive {display} ({packed} bytes) unpacks to more than {ratio:g} times its size"
            " (limit: --max-expansion-ratio)"
        )


def extract_tar(
    archive: Path, into: Path, *, display: str, limits: Limits | None = None
) -> list[str]:
    """Unpack ``archive`` into the (empty) directory ``into``; return its top-level names.

    Absolute paths, ``..`` components, device files and reserved names are rejected with a
    message naming the entry; extraction itself uses tarfile's ``"data"`` filter, which
    also refuses links pointing outside ``into``. Each entry is checked against ``limits``
    (entry count, unpacked bytes, expansion ratio) *before* it is written. The archive is
    read in a single pass. On error, ``into`` may hold part of the archive: the caller
    removes it.
    """
    limits = limits or Limits()
    packed = archive.stat().st_size
    files = 0
    entries = 0
    total = 0

    def checked(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        nonlocal files, entries, total
        for member in tf:
            _check_member(display, member)
            entries += 1
            total += member.size if member.isreg() else 0
            _check_size(display, limits, entries, total, packed)
            files += member.isfile()
            yield member if HAS_DATA_FILTER else _without_filter(display, member)

    try:
        with tarfile.open(archive, mode="r:*") as tf:
            if HAS_DATA_FILTER:
                tf.extractall(into, members=checked(tf), filter="data")
            else:
                tf.extractall(into, members=checked(tf))
    except PreloadError:
        raise
    except getattr(tarfile, "FilterError", PreloadError) as exc:
        raise PreloadError(f"archive {display} has an unsafe entry: {exc}") from None
    except OSError as exc:
        if exc.errno is None:  # e.g. gzip.BadGzipFile
            raise PreloadError(f"archive {display} is damaged: {exc}") from None
        raise PreloadError(
            f"could not unpack archive {display} into {into.parent}: {exc}"
        ) from None
    except _READ_ERRORS as exc:
        raise PreloadError(
            f"archive {display} could not be unpacked (damaged or not a tar archive): {exc}"
        ) from None
    if files == 0:
        raise PreloadError(f"archive {display} contains no files")
    return sorted(os.listdir(into))
