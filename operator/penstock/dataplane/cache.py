"""The exact response cache: canonical keys, checksummed envelopes and a fail-open Redis store.

A cache problem never fails a request: Redis down, slow (short socket timeouts), full or
returning a damaged entry all mean "go to the stage", and are counted by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("penstock.gateway.cache")

KEY_PREFIX = "penstock:cache:v1:"
_MAGIC = b"PSC1"
# magic, status, content-type length, body length, sha256 digest
_HEADER = struct.Struct(">4sHHI32s")


def canonical_json(value: Any) -> str:
    """One text per JSON value: sorted keys, no insignificant whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(
    *,
    pipeline: str,
    stage: str,
    stage_image: str,
    model_version: str,
    method: str,
    path: str,
    body: Any,
    headers: Mapping[str, str],
    key_headers: Iterable[str],
) -> str:
    """sha256 over everything that can change the answer; ``body`` is the parsed JSON body.

    ``headers`` is looked up case-insensitively by the lower-case names in ``key_headers``;
    an absent header and an empty one are different.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    chosen = [[name, lowered.get(name)] for name in sorted({h.lower() for h in key_headers})]
    material = [pipeline, stage, stage_image, model_version, method.upper(), path, body, chosen]
    digest = hashlib.sha256(canonical_json(material).encode()).hexdigest()
    return KEY_PREFIX + digest


@dataclass(frozen=True)
class Entry:
    status: int
    content_type: str
    body: bytes


class CorruptEntry(ValueError):
    """A stored entry whose framing, length or checksum does not match."""


def _checksum(status: int, content_type: bytes, body: bytes) -> bytes:
    hasher = hashlib.sha256()
    hasher.update(struct.pack(">HI", status, len(content_type)))
    hasher.update(content_type)
    hasher.update(body)
    return hasher.digest()


def encode_entry(entry: Entry) -> bytes:
    """Envelope: fixed header (magic, status, lengths, sha256) + content type + body."""
    content_type = entry.content_type.encode("latin-1", "replace")[:65535]
    header = _HEADER.pack(
        _MAGIC,
        entry.status,
        len(content_type),
        len(entry.body),
        _checksum(entry.status, content_type, entry.body),
    )
    return header + content_type + entry.body


def decode_entry(data: bytes) -> Entry:
    """The entry, or :class:`CorruptEntry` when anything does not match exactly."""
    if len(data) < _HEADER.size:
        raise CorruptEntry(f"entry of {len(data)} bytes is shorter than its header")
    magic, status, type_length, body_length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptEntry("entry has an unknown format marker")
    expected = _HEADER.size + type_length + body_length
    if len(data) != expected:
        raise CorruptEntry(f"entry is {len(data)} bytes, its header says {expected}")
    content_type = data[_HEADER.size : _HEADER.size + type_length]
    body = data[_HEADER.size + type_length :]
    if _checksum(status, content_type, body) != digest:
        raise CorruptEntry("entry checksum does not match its content")
    if not 200 <= status <= 299:
        raise CorruptEntry(f"entry has non-2xx status {status}")
    return Entry(status, content_type.decode("latin-1"), body)


class Lookup(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    ERROR = "error"


class Store(enum.Enum):
    STORED = "stored"
    TOO_LARGE = "too_large"
    ERROR = "error"


class RedisCache:
    """Fail-open cache over ``redis.asyncio``.

    Every operation has a short deadline (``timeout`` seconds, also the socket timeouts) and
    no retries; after an error Redis is skipped for ``backoff`` seconds so that a dead or
    slow Redis costs the request path nothing (those skipped lookups count as errors).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        ttl_seconds: int,
        max_entry_bytes: int,
        timeout: float = 0.05,
        backoff: float = 1.0,
    ) -> None:
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": 256,
        }
        if password:
            options["password"] = password
        self._client = aioredis.Redis.from_url(url, **options)
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self._timeout = timeout
        self._backoff = backoff
        self._skip_until = 0.0
        self.last_error: str | None = None

    def _failed(self, operation: str, error: BaseException) -> None:
        self._skip_until = time.monotonic() + self._backoff
        message = f"redis {operation} failed: {type(error).__name__}: {error}"
        if message != self.last_error:
            log.warning("%s; bypassing the cache for %.1fs", message, self._backoff)
        self.last_error = message

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def get(self, key: str) -> tuple[Lookup, Entry | None]:
        if not self._available():
            return Lookup.ERROR, None
        try:
            async with asyncio.timeout(self._timeout * 2):
                raw = await self._client.get(key)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed("GET", error)
            return Lookup.ERROR, None
        if raw is None:
            return Lookup.MISS, None
        try:
            data = raw if isinstance(raw, bytes) else str(raw).encode("latin-1")
            return Lookup.HIT, decode_entry(data)
        except CorruptEntry as error:
            log.warning("cache entry %s not served: %s", key, error)
            await self._delete(key)
            return Lookup.ERROR, None

    async def _delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._client.delete(key)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed("DEL", error)

    async def put(self, key: str, entry: Entry) -> Store:
        if len(entry.body) > self.max_entry_bytes:
            return Store.TOO_LARGE
        if not self._available():
            return Store.ERROR
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._client.set(key, encode_entry(entry), ex=self.ttl_seconds)
        except (RedisError, OSError, TimeoutError) as error:
            self._failed("SET", error)
            return Store.ERROR
        return Store.STORED

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
