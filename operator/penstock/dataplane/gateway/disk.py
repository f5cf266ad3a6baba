"""The ``disk`` cache tier: entries as files in a directory (the stage's PersistentVolumeClaim),
for large or expensive answers such as embedding vectors, kept across pod restarts.

One file per key, ``<dir>/<2 hex>/<sha256 of the key>``, written to a temporary name and
renamed, so a reader sees a whole entry or none. A file holds the key itself, the entry's
expiry (Unix seconds) and the envelope of cache.encode_entry, under a sha256 of all three: a
torn, truncated or flipped file is not served (it is removed and counted as an error). The
directory is bounded in bytes: past ``max_bytes`` a sweep removes expired files, then the least
recently read, down to 90%. Every file operation runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import time
from pathlib import Path
from typing import Unpack

from penstock.dataplane.gateway.cache import CorruptEntry, StoreCache, TierOptions

log = logging.getLogger(__name__)

_MAGIC = b"PSD1"
# magic, sha256 of the rest, expiry (Unix seconds), key length
_HEADER = struct.Struct(">4s32sdH")
_TEMP_PREFIX = "."
# A read refreshes a file's mtime (the sweep's recency) at most this often.
_TOUCH_AFTER_SECONDS = 60.0
# Files left by a writer that died between write and rename are removed after this long.
_STALE_TEMP_SECONDS = 60.0


def entry_path(root: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return root / digest[:2] / digest


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` (a name the sweep knows for one) and
    rename it into place: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{_TEMP_PREFIX}{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        with temp.open("xb") as file:
            file.write(data)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _digest(expires: float, key: bytes, value: bytes) -> bytes:
    hasher = hashlib.sha256()
    hasher.update(struct.pack(">dH", expires, len(key)))
    hasher.update(key)
    hasher.update(value)
    return hasher.digest()


def encode_file(key: str, value: bytes, expires: float) -> bytes:
    raw_key = key.encode()
    header = _HEADER.pack(_MAGIC, _digest(expires, raw_key, value), expires, len(raw_key))
    return header + raw_key + value


def decode_file(key: str, data: bytes) -> tuple[bytes, float]:
    """(envelope, expiry) of a file, or :class:`CorruptEntry` when anything does not match."""
    if len(data) < _HEADER.size:
        raise CorruptEntry(f"disk entry of {len(data)} bytes is shorter than its header")
    magic, digest, expires, key_length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptEntry("disk entry has an unknown format marker")
    raw_key = data[_HEADER.size : _HEADER.size + key_length]
    value = data[_HEADER.size + key_length :]
    if _digest(expires, raw_key, value) != digest:
        raise CorruptEntry("disk entry checksum does not match its content")
    if raw_key != key.encode():
        raise CorruptEntry("disk entry holds another key")
    return value, expires


class DiskCache(StoreCache):
    """The ``disk`` tier on a directory; fails open like the network tiers (an OSError, a full
    or read-only volume, skips the tier for ``backoff`` seconds, counted)."""

    engine = "disk"

    def __init__(
        self,
        root: str | Path,
        *,
        max_bytes: int,
        **options: Unpack[TierOptions],
    ) -> None:
        # A file read waits for a worker thread: a longer deadline than a network round trip.
        options.setdefault("timeout", 0.5)
        super().__init__(name="disk", sign_key=None, **options)
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.bytes: int | None = None  # unknown until the first sweep has counted the files
        self._sweeping: asyncio.Task[None] | None = None

    # The tier's three operations, each run in a worker thread.

    async def _fetch(self, key: str, with_ttl: bool) -> tuple[bytes | None, float | None]:
        return await asyncio.to_thread(self._read, key)

    async def _write(self, items: list[tuple[str, bytes, int]]) -> None:
        written = await asyncio.to_thread(self._store, items)
        self.bytes = None if self.bytes is None else self.bytes + written
        if self.bytes is None or self.bytes > self.max_bytes:
            self.sweep_soon()

    async def _remove(self, key: str) -> None:
        await asyncio.to_thread(self._unlink, entry_path(self.root, key))

    def _read(self, key: str) -> tuple[bytes | None, float | None]:
        path = entry_path(self.root, key)
        try:
            with path.open("rb") as file:
                data = file.read()
                modified = os.fstat(file.fileno()).st_mtime
        except FileNotFoundError:
            return None, None
        value, expires = decode_file(key, data)
        now = time.time()
        if expires <= now:
            return None, None  # the sweep removes it
        if now - modified > _TOUCH_AFTER_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
        return value, expires - now

    def _store(self, items: list[tuple[str, bytes, int]]) -> int:
        """Write each item in place, atomically; the bytes written."""
        written = 0
        now = time.time()
        for key, value, ttl in items:
            data = encode_file(key, value, now + ttl)
            write_atomically(entry_path(self.root, key), data)
            written += len(data)
        return written

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # Bounding the directory.

    def sweep_soon(self) -> None:
        """Count the directory and evict, in the background (one sweep at a time)."""
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self.sweep())

    async def sweep(self) -> None:
        try:
            self.bytes = await asyncio.to_thread(self._sweep)
        except OSError as error:
            self._failed("sweep", error)

    def _sweep(self) -> int:
        """Remove expired entries and stale temporary files, then the least recently read
        entries until the directory holds at most 90% of ``max_bytes``; the bytes left."""
        now = time.time()
        files: list[tuple[float, int, Path]] = []
        total = 0
        if not self.root.is_dir():
            return 0
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(sub.path):
                try:
                    stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                path = Path(item.path)
                if item.name.startswith(_TEMP_PREFIX):
                    if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                        self._unlink(path)
                    continue
                if self._expired(path, now):
                    self._unlink(path)
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
                total += stat.st_size
        if total > self.max_bytes:
            files.sort()
            goal = self.max_bytes * 9 // 10
            for _, size, path in files:
                if total <= goal:
                    break
                self._unlink(path)
                total -= size
            log.info("disk tier: evicted down to %d bytes (bound %d)", total, self.max_bytes)
        return total

    @staticmethod
    def _expired(path: Path, now: float) -> bool:
        try:
            with path.open("rb") as file:
                header = file.read(_HEADER.size)
        except FileNotFoundError:
            return False
        if len(header) < _HEADER.size:
            return True  # not a whole entry: nothing would ever serve it
        magic, _, expires, _ = _HEADER.unpack(header)
        return magic != _MAGIC or bool(expires <= now)

    async def close(self) -> None:
        if self._sweeping is not None and not self._sweeping.done():
            with contextlib.suppress(asyncio.CancelledError, *self.errors):
                await self._sweeping
