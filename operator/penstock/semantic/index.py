"""A bounded vector index of stored inputs, searched only among inputs with an equal guard.

Each bucket (one guard digest) holds unit vectors in one float32 matrix, so a lookup is one
matrix-vector product over the few inputs a guard lets through. The index holds at most
``max_entries`` inputs over all buckets; the least recently stored or matched goes first.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_SNAPSHOT_MAGIC = b"PSI1"
_SNAPSHOT_HEADER = struct.Struct(">4s32sI")  # magic, sha256 of the rest, JSON length


class CorruptSnapshot(ValueError):
    """A snapshot whose framing, checksum or content does not match."""


class Entry(NamedTuple):
    guard: str
    key: str
    text: str
    row: Vector


def encode_snapshot(dimension: int | None, entries: Sequence[Entry]) -> bytes:
    """The snapshot of ``entries`` (see :meth:`SemanticIndex.restore`): JSON of the guards, keys
    and texts, then the rows as little-endian float32, under one sha256."""
    listed = [[entry.guard, entry.key, entry.text] for entry in entries]
    header = json.dumps({"dimension": dimension, "entries": listed}).encode()
    matrix = np.stack([entry.row for entry in entries]).astype("<f4").tobytes() if entries else b""
    body = header + matrix
    digest = hashlib.sha256(body).digest()
    return _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, digest, len(header)) + body


def unit(vector: Sequence[float] | Vector) -> Vector:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or not array.size:
        raise ValueError("an embedding is a non-empty list of numbers")
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("an embedding must be finite and not all zero")
    result: Vector = array / np.float32(norm)
    return result


@dataclass(frozen=True)
class Match:
    key: str
    """What the matched input was stored under (the exact cache key of its answer)."""
    text: str
    """The stored input's text, for the pairwise checks of the policy."""
    similarity: float


@dataclass
class _Bucket:
    keys: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rows: list[Vector] = field(default_factory=list)
    matrix: Vector | None = None  # rows stacked, rebuilt on the first lookup after a change


class SemanticIndex:
    def __init__(self, max_entries: int, dimension: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.dimension = dimension
        self._buckets: dict[str, _Bucket] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()  # (guard, key), LRU

    def __len__(self) -> int:
        return len(self._order)

    def _check(self, vector: Vector) -> None:
        if self.dimension is None:
            self.dimension = int(vector.shape[0])
        elif vector.shape[0] != self.dimension:
            raise ValueError(
                f"an embedding of {vector.shape[0]} numbers; this index holds {self.dimension}"
            )

    def add(self, guard: str, key: str, text: str, vector: Sequence[float] | Vector) -> None:
        row = unit(vector)
        self._check(row)
        bucket = self._buckets.setdefault(guard, _Bucket())
        if (guard, key) in self._order:
            index = bucket.keys.index(key)
            bucket.rows[index], bucket.texts[index] = row, text
            self._order.move_to_end((guard, key))
        else:
            bucket.keys.append(key)
            bucket.texts.append(text)
            bucket.rows.append(row)
            self._order[(guard, key)] = None
        bucket.matrix = None
        while len(self._order) > self.max_entries:
            old_guard, old_key = next(iter(self._order))
            self.remove(old_guard, old_key)

    def remove(self, guard: str, key: str) -> None:
        if (guard, key) not in self._order:
            return
        del self._order[(guard, key)]
        bucket = self._buckets[guard]
        index = bucket.keys.index(key)
        del bucket.keys[index], bucket.texts[index], bucket.rows[index]
        bucket.matrix = None
        if not bucket.keys:
            del self._buckets[guard]

    def candidates(
        self, guard: str, vector: Sequence[float] | Vector, threshold: float, limit: int = 4
    ) -> list[Match]:
        """The stored inputs with this guard whose cosine is >= threshold, most similar first
        (at most ``limit``)."""
        bucket = self._buckets.get(guard)
        if bucket is None:
            return []
        row = unit(vector)
        self._check(row)
        if bucket.matrix is None:
            bucket.matrix = np.stack(bucket.rows)
        scores = bucket.matrix @ row
        order = np.argsort(-scores)[:limit]
        return [
            Match(bucket.keys[i], bucket.texts[i], float(scores[i]))
            for i in (int(i) for i in order)
            if scores[i] >= threshold
        ]

    def touch(self, guard: str, key: str) -> None:
        """Mark a stored input as just used (it answered a lookup)."""
        if (guard, key) in self._order:
            self._order.move_to_end((guard, key))

    def entries(self) -> list[Entry]:
        """Every input in recency order (least recent first): a copy cheap enough for the event
        loop, which :func:`encode_snapshot` may then turn into bytes in another thread (rows are
        replaced, never changed in place)."""
        where = {
            guard: {key: i for i, key in enumerate(bucket.keys)}
            for guard, bucket in self._buckets.items()
        }
        entries = []
        for guard, key in self._order:
            bucket, i = self._buckets[guard], where[guard][key]
            entries.append(Entry(guard, key, bucket.texts[i], bucket.rows[i]))
        return entries

    def snapshot(self) -> bytes:
        """Every input in recency order, with its vector, checksummed."""
        return encode_snapshot(self.dimension, self.entries())

    @classmethod
    def restore(cls, data: bytes, max_entries: int) -> SemanticIndex:
        """The index a snapshot holds (its most recent ``max_entries`` inputs), or
        :class:`CorruptSnapshot`."""
        if len(data) < _SNAPSHOT_HEADER.size:
            raise CorruptSnapshot("shorter than its header")
        magic, digest, length = _SNAPSHOT_HEADER.unpack_from(data)
        body = data[_SNAPSHOT_HEADER.size :]
        if magic != _SNAPSHOT_MAGIC or hashlib.sha256(body).digest() != digest:
            raise CorruptSnapshot("unknown format or checksum mismatch")
        try:
            header = json.loads(body[:length])
            dimension, entries = header["dimension"], header["entries"]
            index = cls(max_entries, dimension)
            if not entries:
                return index
            matrix = np.frombuffer(body[length:], dtype="<f4").reshape(len(entries), dimension)
            for (guard, key, text), row in zip(entries, matrix, strict=True):
                index.add(str(guard), str(key), str(text), row)
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptSnapshot(f"unreadable: {error}") from None
        return index
