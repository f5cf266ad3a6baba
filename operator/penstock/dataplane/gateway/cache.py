"""The exact response cache: canonical keys, checksummed envelopes and a fail-open Redis store.

A cache problem never fails a request: Redis down, slow (short socket timeouts), full or
returning a damaged entry all mean "go to the stage", and are counted by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Required, TypedDict, Unpack
from urllib.parse import urlsplit

import aiomcache
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from penstock.dataplane.gateway.sharing import header_values

log = logging.getLogger("penstock.gateway.cache")

# v3: keys on the namespace too (a shared tier may serve several namespaces), the raw path and
# every value of a key header, and honours Vary; entries stored under older rules are never read.
KEY_PREFIX = "penstock:cache:v3:"
_MAGIC = b"PSC1"
# PSC2: the content-type field is "<content type>\n<X-Penstock-Confidence value>" (an answer's
# confidence is part of it: a cascade must see it on a hit too). PSC1 entries read as before.
_CONFIDENT_MAGIC = b"PSC2"
_VARY_MAGIC = b"PSV1"
_SIGNED_MAGIC = b"PSS1"  # + HMAC-SHA256 of the envelope under the Pipeline's key + the envelope
# magic, status, content-type length, body length, sha256 digest
_HEADER = struct.Struct(">4sHHI32s")


def canonical_json(value: Any) -> str:
    """One text per JSON value: sorted keys, no insignificant whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _material(value: Any) -> bytes:
    # surrogatepass: header values hold the raw bytes aiohttp could not decode as surrogates.
    return canonical_json(value).encode("utf-8", "surrogatepass")


def cache_key(
    *,
    namespace: str = "",
    pipeline: str,
    stage: str,
    stage_image: str,
    model_version: str,
    method: str,
    path: str,
    body: Any,
    headers: Mapping[str, str],
    key_headers: Iterable[str],
    generation: int = 0,
) -> str:
    """sha256 over everything that can change the answer.

    ``body`` is the canonical UTF-8 text of the JSON body (bytes, from
    :func:`penstock.dataplane.jsonbody.canonical`) or a JSON value; ``path`` is the raw path
    and query as sent. ``headers`` is looked up case-insensitively by the lower-case names in
    ``key_headers``, every value in order; an absent header and an empty one are different.
    """
    chosen = [
        [name, header_values(headers, name)] for name in sorted({h.lower() for h in key_headers})
    ]
    material = [
        generation,
        namespace,
        pipeline,
        stage,
        stage_image,
        model_version,
        method.upper(),
        path,
        chosen,
    ]
    canonical = body if isinstance(body, bytes) else _material(body)
    hasher = hashlib.sha256(_material(material))
    hasher.update(b"\n")  # the material is one JSON array: nothing after it can blur it
    hasher.update(canonical)
    return KEY_PREFIX + hasher.hexdigest()


def variant_key(key: str, vary: Iterable[str], headers: Mapping[str, str]) -> str:
    """Where the variant of ``key`` for these values of the ``vary`` request headers lives."""
    chosen = [[name, header_values(headers, name)] for name in vary]
    digest = hashlib.sha256(_material([key, chosen])).hexdigest()
    return KEY_PREFIX + "vary:" + digest


@dataclass(frozen=True)
class Entry:
    status: int
    content_type: str
    body: bytes
    confidence: str | None = None
    """The stage's X-Penstock-Confidence value (stored_confidence checked it), replayed on hits."""


_CONFIDENCE_VALUE = re.compile(r"[0-9][0-9.eE+-]{0,31}")


def stored_confidence(value: str | None) -> str | None:
    """The X-Penstock-Confidence value worth storing: a short number, else None."""
    value = (value or "").strip()
    return value if _CONFIDENCE_VALUE.fullmatch(value) else None


@dataclass(frozen=True)
class Variants:
    """Stored at a key whose answer varies on request headers: the variants are at
    :func:`variant_key` of those headers' values."""

    vary: tuple[str, ...]


@dataclass(frozen=True)
class Found:
    """What a tier's lookup found: the entry on a hit, the request headers it varies on, and
    the seconds it has left when the tier was asked."""

    lookup: Lookup
    entry: Entry | None = None
    vary: tuple[str, ...] = ()
    ttl_seconds: float | None = None


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
    content_type = entry.content_type.encode("latin-1", "replace")[:65000]
    magic = _MAGIC
    if entry.confidence is not None:
        magic = _CONFIDENT_MAGIC
        content_type += b"\n" + entry.confidence.encode("ascii")
    header = _HEADER.pack(
        magic,
        entry.status,
        len(content_type),
        len(entry.body),
        _checksum(entry.status, content_type, entry.body),
    )
    return header + content_type + entry.body


def encode_variants(variants: Variants) -> bytes:
    """Envelope: magic + sha256 of the names + the names, comma-separated."""
    names = ",".join(variants.vary).encode("ascii")
    return _VARY_MAGIC + hashlib.sha256(names).digest() + names


def decode_entry(data: bytes) -> Entry | Variants:
    """The entry or the Variants marker, or :class:`CorruptEntry` when anything does not
    match exactly."""
    if data[:4] == _VARY_MAGIC:
        names, digest = data[36:], data[4:36]
        if len(digest) != 32 or hashlib.sha256(names).digest() != digest:
            raise CorruptEntry("vary marker checksum does not match its content")
        vary = tuple(names.decode("ascii", "replace").split(",")) if names else ()
        if not vary or any(not name for name in vary):
            raise CorruptEntry("vary marker names no header")
        return Variants(vary)
    if len(data) < _HEADER.size:
        raise CorruptEntry(f"entry of {len(data)} bytes is shorter than its header")
    magic, status, type_length, body_length, digest = _HEADER.unpack_from(data)
    if magic not in (_MAGIC, _CONFIDENT_MAGIC):
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
    confidence = None
    if magic == _CONFIDENT_MAGIC:
        content_type, _, value = content_type.rpartition(b"\n")
        confidence = stored_confidence(value.decode("latin-1"))
        if confidence is None:
            raise CorruptEntry("entry has an unreadable confidence")
    return Entry(status, content_type.decode("latin-1"), body, confidence)


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Pipeline's shared-tier entries, from its cache Secret."""
    return hashlib.sha256(b"penstock shared cache tier\0" + secret.encode()).digest()


def sign(key: bytes, envelope: bytes) -> bytes:
    return _SIGNED_MAGIC + hmac.new(key, envelope, hashlib.sha256).digest() + envelope


def unsign(key: bytes, data: bytes) -> bytes | None:
    """The envelope when ``data`` was signed with ``key``; None when not (another Pipeline's
    entry, or one planted by anyone without the key)."""
    if data[:4] != _SIGNED_MAGIC or len(data) < 36:
        return None
    envelope = data[36:]
    expected = hmac.new(key, envelope, hashlib.sha256).digest()
    return envelope if hmac.compare_digest(expected, data[4:36]) else None


class Lookup(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    ERROR = "error"


class Store(enum.Enum):
    STORED = "stored"
    TOO_LARGE = "too_large"
    ERROR = "error"


class TierOptions(TypedDict, total=False):
    """What every tier on a store takes besides its address, name and signing key."""

    ttl_seconds: Required[int]
    max_entry_bytes: Required[int]
    timeout: float
    backoff: float


class StoreCache:
    """Fail-open cache on a store outside the process (a server, a directory); subclasses give
    the store's three operations.

    Every operation has a short deadline (``timeout`` seconds, also the socket timeouts) and
    no retries; after an error the store is skipped for ``backoff`` seconds so that a dead or
    slow one costs the request path nothing (those skipped lookups count as errors).
    """

    engine = ""
    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def __init__(
        self,
        *,
        name: str,
        sign_key: bytes | None,
        ttl_seconds: int,
        max_entry_bytes: int,
        timeout: float = 0.05,
        backoff: float = 1.0,
    ) -> None:
        """sign_key: entries are signed and only entries signed with it are served (a store
        other Pipelines share: the ``shared`` tier); a foreign entry is a miss, left alone."""
        self.name = name
        self._sign_key = sign_key
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self._timeout = timeout
        self._backoff = backoff
        self._skip_until = 0.0
        self.last_error: str | None = None

    async def _fetch(self, key: str, with_ttl: bool) -> tuple[bytes | None, float | None]:
        raise NotImplementedError

    async def _write(self, items: list[tuple[str, bytes, int]]) -> None:
        """Store each (key, value, ttl seconds)."""
        raise NotImplementedError

    async def _remove(self, key: str) -> None:
        raise NotImplementedError

    def _failed(self, operation: str, error: BaseException) -> None:
        self._skip_until = time.monotonic() + self._backoff
        message = f"{self.engine} {operation} failed: {type(error).__name__}: {error}"
        if message != self.last_error:
            log.warning("%s; bypassing the cache for %.1fs", message, self._backoff)
        self.last_error = message

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def _get(
        self, key: str, with_ttl: bool = False
    ) -> tuple[Lookup, Entry | Variants | None, float | None]:
        """The stored value, and with ``with_ttl`` its remaining seconds (same round trip)."""
        try:
            async with asyncio.timeout(self._timeout * 2):
                data, ttl = await self._fetch(key, with_ttl)
        except self.errors as error:
            self._failed("GET", error)
            return Lookup.ERROR, None, None
        except CorruptEntry as error:  # a store that checks its own framing (disk)
            log.warning("cache entry %s not served: %s", key, error)
            await self._delete(key)
            return Lookup.ERROR, None, None
        if data is None:
            return Lookup.MISS, None, None
        if self._sign_key is not None:
            envelope = unsign(self._sign_key, data)
            if envelope is None:  # not ours to serve, nor to delete
                log.debug(
                    "%s tier: entry %s is not signed with this Pipeline's key", self.name, key
                )
                return Lookup.MISS, None, None
            data = envelope
        try:
            return Lookup.HIT, decode_entry(data), ttl
        except CorruptEntry as error:
            log.warning("cache entry %s not served: %s", key, error)
            await self._delete(key)
            return Lookup.ERROR, None, None

    async def lookup(
        self, key: str, headers: Mapping[str, str] | None = None, with_ttl: bool = False
    ) -> Found:
        """The entry for ``key``; when the answer varies on request headers, the variant for
        ``headers`` (a second GET, only for such answers), with the headers it varies on and,
        with ``with_ttl``, how long it has left (for a faster tier to hold it no longer)."""
        if not self._available():
            return Found(Lookup.ERROR)
        lookup, found, ttl = await self._get(key, with_ttl)
        vary: tuple[str, ...] = ()
        if isinstance(found, Variants):
            if headers is None:
                return Found(Lookup.MISS)
            vary = found.vary
            lookup, found, ttl = await self._get(variant_key(key, vary, headers), with_ttl)
            if isinstance(found, Variants):  # a marker never sits at a variant key
                return Found(Lookup.ERROR)
        return Found(lookup, found, vary, ttl)

    async def _delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._remove(key)
        except self.errors as error:
            self._failed("DEL", error)

    async def put(
        self,
        key: str,
        entry: Entry,
        *,
        vary: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Store:
        """Store ``entry`` for ``key``; with ``vary``, as the variant for those of ``headers``
        (the marker and the variant in one round trip). ``ttl_seconds`` caps the TTL."""
        if len(entry.body) > self.max_entry_bytes:
            return Store.TOO_LARGE
        if not self._available():
            return Store.ERROR
        ttl = (
            self.ttl_seconds if ttl_seconds is None else max(1, min(ttl_seconds, self.ttl_seconds))
        )
        items = [(key, encode_entry(entry), ttl)]
        if vary:
            assert headers is not None
            items = [
                (key, encode_variants(Variants(vary)), self.ttl_seconds),
                (variant_key(key, vary, headers), encode_entry(entry), ttl),
            ]
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._write([(name, self._seal(value), ttl) for name, value, ttl in items])
        except self.errors as error:
            self._failed("SET", error)
            return Store.ERROR
        return Store.STORED

    def _seal(self, envelope: bytes) -> bytes:
        return envelope if self._sign_key is None else sign(self._sign_key, envelope)


RedisClient = aioredis.Redis | aioredis.RedisCluster


def redis_client(
    url: str,
    *,
    password: str | None,
    timeout: float,
    cluster: bool = False,
    read_timeout: bool = True,
) -> RedisClient:
    """The one way the gateway reaches a Redis (a tier, the leases): ``timeout`` to connect
    and, with ``read_timeout``, for each answer; no retries (a failure is a fail-open miss);
    up to 256 connections. ``cluster``: ``url`` is one node of a Redis Cluster."""
    options: dict[str, Any] = {
        "socket_timeout": timeout if read_timeout else None,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": 256,
    }
    if password:
        options["password"] = password
    if cluster:
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


class SlotMap:
    """Maps a Redis Cluster's slots once, before the first command: redis-py's cluster client
    maps them lazily, and concurrent first commands race there (some fail with errors no
    handler expects). A no-op for a single Redis."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._lock = asyncio.Lock()
        self.ready = not isinstance(client, aioredis.RedisCluster)

    async def __call__(self) -> None:
        if self.ready:
            return
        async with self._lock:
            if not self.ready and isinstance(self._client, aioredis.RedisCluster):
                await self._client.initialize()
                self.ready = True


class RedisCache(StoreCache):
    """The cache on Redis (or Valkey): the pod's sidecar, or a shared endpoint."""

    engine = "redis"
    errors = (RedisError, OSError, TimeoutError)

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        name: str = "pod",
        sign_key: bytes | None = None,
        cluster: bool = False,
        **options: Unpack[TierOptions],
    ) -> None:
        """cluster: ``url`` is one node of a Redis Cluster; the client finds the others and
        sends each key to the node holding its slot."""
        super().__init__(name=name, sign_key=sign_key, **options)
        self._client = redis_client(url, password=password, timeout=self._timeout, cluster=cluster)
        self._slots = SlotMap(self._client)

    async def _fetch(self, key: str, with_ttl: bool) -> tuple[bytes | None, float | None]:
        await self._slots()
        if not with_ttl:
            raw, ttl = await self._client.get(key), None
        else:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
            ttl = pttl / 1000 if isinstance(pttl, int) and pttl > 0 else None
        if raw is None:
            return None, None
        return (raw if isinstance(raw, bytes) else str(raw).encode("latin-1")), ttl

    async def _write(self, items: list[tuple[str, bytes, int]]) -> None:
        await self._slots()
        if len(items) == 1:
            key, value, ttl = items[0]
            await self._client.set(key, value, ex=ttl)
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value, ttl in items:
            pipe.set(key, value, ex=ttl)
        await pipe.execute()

    async def _remove(self, key: str) -> None:
        await self._slots()
        await self._client.delete(key)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()


MEMCACHED_SCHEME = "memcached://"
_EXPIRES = struct.Struct(">d")  # a Memcached value starts with when it expires (Unix seconds)


class MemcachedCache(StoreCache):
    """The shared tier on Memcached (``memcached://HOST[:PORT]``, text protocol, no auth).

    Memcached cannot say how long an entry has left, so each value starts with its expiry
    time, under the entry's signature, for a faster tier never to hold it longer. A request
    cut off by its deadline leaves its connection mid-answer: the pool is replaced, so no
    later request reads that answer (a get only returns the value of the key it asked for,
    and entries are signed, but a connection out of step is not worth keeping)."""

    engine = "memcached"
    errors = (aiomcache.exceptions.ClientException, OSError, TimeoutError, EOFError)

    def __init__(
        self,
        url: str,
        *,
        sign_key: bytes,
        name: str = "shared",
        **options: Unpack[TierOptions],
    ) -> None:
        super().__init__(name=name, sign_key=sign_key, **options)
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 11211)
        self._client = self._connect()

    def _connect(self) -> aiomcache.Client:
        host, port = self._address
        return aiomcache.Client(host, port, pool_size=64, pool_minsize=1)

    def _failed(self, operation: str, error: BaseException) -> None:
        super()._failed(operation, error)
        stale, self._client = self._client, self._connect()
        asyncio.get_running_loop().create_task(stale.close())

    async def _fetch(self, key: str, with_ttl: bool) -> tuple[bytes | None, float | None]:
        raw = await self._client.get(key.encode("ascii"))
        if raw is None:
            return None, None
        assert self._sign_key is not None
        envelope = unsign(self._sign_key, raw)
        if envelope is None or len(envelope) < _EXPIRES.size:
            return raw, None  # not ours: the caller's check says so
        (expires,) = _EXPIRES.unpack_from(envelope)
        left = expires - time.time()
        if left <= 0:
            return None, None  # Memcached's clock and ours disagree by a second: gone
        # Re-sealed without the expiry: the envelope the other tiers store.
        return sign(self._sign_key, envelope[_EXPIRES.size :]), left

    def _seal(self, envelope: bytes) -> bytes:
        return envelope  # _write seals, with the expiry

    async def _write(self, items: list[tuple[str, bytes, int]]) -> None:
        assert self._sign_key is not None
        now = time.time()
        for key, value, ttl in items:
            sealed = sign(self._sign_key, _EXPIRES.pack(now + ttl) + value)
            await self._client.set(key.encode("ascii"), sealed, exptime=ttl)

    async def _remove(self, key: str) -> None:
        await self._client.delete(key.encode("ascii"))

    async def close(self) -> None:
        with contextlib.suppress(*self.errors):
            await self._client.close()
