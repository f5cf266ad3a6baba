"""Cache tiers looked up in order and filled on the way back: ``memory`` (an LRU in the gateway
process: a hit never leaves it), ``pod`` (the Redis sidecar), ``shared`` (a Redis or Memcached
every replica shares) and ``disk`` (files on the stage's volume, kept across restarts).

Every tier keys and varies entries the same way (cache.cache_key, cache.variant_key) and fails
open: a broken tier is a miss of that tier, counted, and the lookup goes on to the next. A hit in
a later tier is copied into the earlier ones for no longer than it has left there, so a faster
tier never serves an answer its source already dropped; a hit does not renew a TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from penstock.dataplane.gateway.cache import (
    MEMCACHED_SCHEME,
    Entry,
    Found,
    Lookup,
    MemcachedCache,
    RedisCache,
    Store,
    TierOptions,
    Variants,
    signing_key,
    variant_key,
)
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.gateway.disk import DiskCache


class Tier(Protocol):
    name: str
    last_error: str | None

    async def lookup(
        self, key: str, headers: Mapping[str, str] | None = None, with_ttl: bool = False
    ) -> Found: ...

    async def put(
        self,
        key: str,
        entry: Entry,
        *,
        vary: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Store: ...

    async def close(self) -> None: ...


@dataclass
class _Held:
    value: Entry | Variants
    expires: float
    size: int


class MemoryCache:
    """An LRU of entries bounded in count and in bytes (bodies, content types and keys)."""

    name = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_seconds: int,
        max_entry_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._items: OrderedDict[str, _Held] = OrderedDict()
        self.bytes = 0
        self.last_error: str | None = None  # an in-process tier does not fail

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, key: str) -> _Held | None:
        held = self._items.get(key)
        if held is None:
            return None
        if held.expires <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return held

    def _drop(self, key: str) -> None:
        held = self._items.pop(key, None)
        if held is not None:
            self.bytes -= held.size

    def _set(self, key: str, value: Entry | Variants, ttl: float) -> None:
        if isinstance(value, Entry):
            size = len(key) + len(value.content_type) + len(value.body)
        else:
            size = len(key) + sum(len(name) + 1 for name in value.vary)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._items[key] = _Held(value, self._clock() + ttl, size)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)

    async def lookup(
        self, key: str, headers: Mapping[str, str] | None = None, with_ttl: bool = False
    ) -> Found:
        held = self._get(key)
        vary: tuple[str, ...] = ()
        if held is not None and isinstance(held.value, Variants):
            if headers is None:
                return Found(Lookup.MISS)
            vary = held.value.vary
            held = self._get(variant_key(key, vary, headers))
        if held is None or not isinstance(held.value, Entry):
            return Found(Lookup.MISS)
        return Found(Lookup.HIT, held.value, vary, max(0.0, held.expires - self._clock()))

    async def put(
        self,
        key: str,
        entry: Entry,
        *,
        vary: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Store:
        if len(entry.body) > self.max_entry_bytes:
            return Store.TOO_LARGE
        ttl = self.ttl_seconds if ttl_seconds is None else min(ttl_seconds, self.ttl_seconds)
        if not vary:
            self._set(key, entry, ttl)
        else:
            assert headers is not None
            self._set(key, Variants(vary), self.ttl_seconds)
            self._set(variant_key(key, vary, headers), entry, ttl)
        return Store.STORED

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


# (tier name, result) of each tier a lookup or store went through, for the metrics
Counted = Callable[[str, str], None]


@dataclass(frozen=True)
class Fill:
    """Copying a later tier's hit into the tiers before it, for the time it has left there."""

    tiers: Sequence[Tier]
    key: str
    found: Found
    headers: Mapping[str, str]
    ttl_seconds: int

    async def __call__(self, on_fill: Counted = lambda tier, result: None) -> None:
        assert self.found.entry is not None
        for tier in self.tiers:
            stored = await tier.put(
                self.key,
                self.found.entry,
                vary=self.found.vary,
                headers=self.headers,
                ttl_seconds=self.ttl_seconds,
            )
            on_fill(tier.name, stored.value)


@dataclass(frozen=True)
class TierHit:
    lookup: Lookup
    entry: Entry | None = None
    tier: str | None = None
    """The tier that answered."""
    fill: Fill | None = None


class Tiers:
    """The stage's tiers in lookup order (at least one)."""

    def __init__(self, tiers: Sequence[Tier]) -> None:
        assert tiers
        self.tiers = list(tiers)

    @property
    def last_error(self) -> str | None:
        return next((t.last_error for t in self.tiers if t.last_error), None)

    async def get(
        self, key: str, headers: Mapping[str, str], on_lookup: Counted = lambda tier, result: None
    ) -> TierHit:
        """The first tier's hit; the result is ERROR only when every tier failed. A hit in a
        later tier comes with its ``fill`` of the tiers before it, for the caller to run once
        the answer is on its way (a Redis tier's fill is a round trip)."""
        errors = 0
        for index, tier in enumerate(self.tiers):
            # Only a tier with faster ones before it needs to say how long the entry has left.
            found = await tier.lookup(key, headers, with_ttl=index > 0)
            on_lookup(tier.name, found.lookup.value)
            if found.lookup is Lookup.HIT and found.entry is not None:
                left = int(found.ttl_seconds or 0)  # whole seconds: never past the source's
                earlier = self.tiers[:index] if left >= 1 else []
                fill = Fill(earlier, key, found, headers, left) if earlier else None
                return TierHit(Lookup.HIT, found.entry, tier.name, fill)
            errors += found.lookup is Lookup.ERROR
        return TierHit(Lookup.ERROR if errors == len(self.tiers) else Lookup.MISS)

    async def put(
        self,
        key: str,
        entry: Entry,
        *,
        vary: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
        on_store: Counted = lambda tier, result: None,
    ) -> Store:
        """Store in every tier: STORED when any tier took it."""
        results = []
        for tier in self.tiers:
            stored = await tier.put(key, entry, vary=vary, headers=headers, ttl_seconds=ttl_seconds)
            on_store(tier.name, stored.value)
            results.append(stored)
        if Store.STORED in results:
            return Store.STORED
        return Store.TOO_LARGE if Store.TOO_LARGE in results else Store.ERROR

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()


def cache_tiers(config: GatewayConfig) -> Tiers | None:
    """The stage's cache tiers in lookup order: memory, pod (the sidecar), shared, disk."""
    tiers: list[Tier] = []
    if config.memory_cache_max_entries:
        tiers.append(
            MemoryCache(
                max_entries=config.memory_cache_max_entries,
                max_bytes=config.memory_cache_max_bytes,
                ttl_seconds=config.cache_ttl_seconds,
                max_entry_bytes=config.cache_max_entry_bytes,
            )
        )
    remote = TierOptions(
        ttl_seconds=config.cache_ttl_seconds,
        max_entry_bytes=config.cache_max_entry_bytes,
        timeout=config.redis_timeout_ms / 1000,
    )
    if config.redis_url:
        tiers.append(RedisCache(config.redis_url, password=config.redis_password, **remote))
    shared_url = config.shared_redis_url
    if shared_url and config.shared_cache_key:
        key = signing_key(config.shared_cache_key)
        if shared_url.startswith(MEMCACHED_SCHEME):
            tiers.append(MemcachedCache(shared_url, sign_key=key, **remote))
        else:
            shared = RedisCache(
                shared_url,
                password=config.shared_redis_password,
                name="shared",
                sign_key=key,
                cluster=config.shared_redis_cluster,
                **remote,
            )
            tiers.append(shared)
    if config.disk_cache_dir:
        tiers.append(
            DiskCache(
                config.disk_cache_dir,
                max_bytes=config.disk_cache_max_bytes,
                ttl_seconds=config.cache_ttl_seconds,
                max_entry_bytes=config.disk_cache_max_entry_bytes,
            )
        )
    return Tiers(tiers) if tiers else None
