"""The cache tiers through real gateways and real redis-servers: the in-process tier before the
pod's Redis (filled on the way back, answering when Redis is gone, never past its source's TTL),
and the shared tier every replica reads (signed: another Pipeline can neither read nor plant)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from penstock.dataplane.gateway.cache import Lookup, RedisCache, signing_key
from penstock.dataplane.gateway.config import ConfigError, parse_config
from tests.integration.test_gateway import Stage, client, running, sample, stage, url
from tests.support import RedisServer

pytestmark = [pytest.mark.integration]
__all__ = ["client", "stage"]  # fixtures
MEMORY = {"memory_cache_max_entries": 100, "memory_cache_max_bytes": 1 << 20}


async def ask(
    session: aiohttp.ClientSession, gateway: object, body: object
) -> tuple[int, str, str | None]:
    async with session.post(url(gateway), json=body) as response:  # type: ignore[arg-type]
        await response.read()
        return (
            response.status,
            response.headers["X-Penstock-Cache"],
            response.headers.get("X-Penstock-Cache-Tier"),
        )


async def test_a_store_lands_in_both_tiers_and_the_memory_tier_answers_without_redis(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **MEMORY) as gateway:
        assert await ask(client, gateway, {"q": 1}) == (200, "miss", None)
        await gateway.stored()
        assert len(redis_server.keys()) == 1  # the pod tier has it too
        assert await ask(client, gateway, {"q": 1}) == (200, "hit", "memory")
        redis_server.kill()
        for _ in range(3):  # a hit never leaves the process: Redis being gone changes nothing
            assert await ask(client, gateway, {"q": 1}) == (200, "hit", "memory")
        assert stage.calls["/"] == 1
        tier = "penstock_stage_cache_tier_lookups_total"
        assert sample(gateway, tier, tier="memory", result="hit") == 4
        assert sample(gateway, tier, tier="pod", result="hit") == 0
        # A new question: the memory tier misses, the dead Redis is an error, the stage answers.
        assert await ask(client, gateway, {"q": 2}) == (200, "miss", None)
        assert sample(gateway, tier, tier="pod", result="error") >= 1


async def test_a_replica_with_a_cold_memory_tier_is_filled_from_redis(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **MEMORY) as first:
        await ask(client, first, {"q": "shared"})
        await first.stored()
    async with running(stage, redis_url=redis_server.url, **MEMORY) as second:
        assert await ask(client, second, {"q": "shared"}) == (200, "hit", "pod")
        await second.stored()  # the fill runs after the answer
        assert await ask(client, second, {"q": "shared"}) == (200, "hit", "memory")
        stores = "penstock_stage_cache_tier_stores_total"
        assert sample(second, stores, tier="memory", result="fill") == 1
    assert stage.calls["/"] == 1


async def test_the_memory_tier_never_outlives_the_redis_entry_it_was_filled_from(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **MEMORY) as first:
        await ask(client, first, {"q": "short"})
        await first.stored()
    (key,) = redis_server.keys()
    redis_server.client.expire(key, 2)  # the entry has 2 s left in Redis
    async with running(stage, redis_url=redis_server.url, **MEMORY) as second:
        assert await ask(client, second, {"q": "short"}) == (200, "hit", "pod")
        await second.stored()  # the fill runs after the answer
        assert await ask(client, second, {"q": "short"}) == (200, "hit", "memory")
        await asyncio.sleep(2.2)
        status, cache, _ = await ask(client, second, {"q": "short"})
        assert (status, cache) == (200, "miss")
    assert stage.calls["/"] == 2


async def test_without_redis_the_memory_tier_alone_caches(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage, **MEMORY) as gateway:
        assert await ask(client, gateway, {"q": 1}) == (200, "miss", None)
        await gateway.stored()
        assert await ask(client, gateway, {"q": 1}) == (200, "hit", "memory")
    assert stage.calls["/"] == 1


async def test_a_hit_carries_the_confidence_the_stage_answered_with(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    # A cascade escalates on a low X-Penstock-Confidence: a cached answer must keep it, from
    # each tier, or the router would take a cached unsure answer for a confident one.
    async def confidence(gateway: object, body: object) -> tuple[str, str | None, str | None]:
        async with client.post(url(gateway), json=body) as response:  # type: ignore[arg-type]
            await response.read()
            return (
                response.headers["X-Penstock-Cache"],
                response.headers.get("X-Penstock-Cache-Tier"),
                response.headers.get("X-Penstock-Confidence"),
            )

    unsure, garbled = {"confidence": "0.25"}, {"confidence": "very\tsure"}
    async with running(stage, redis_url=redis_server.url, **MEMORY) as first:
        assert await confidence(first, unsure) == ("miss", None, "0.25")
        await first.stored()
        assert await confidence(first, unsure) == ("hit", "memory", "0.25")
        assert await confidence(first, garbled) == ("miss", None, "very\tsure")
        await first.stored()
        assert await confidence(first, garbled) == ("hit", "memory", None)  # not a number
        assert await confidence(first, {"q": "sure"}) == ("miss", None, None)
        await first.stored()
        assert await confidence(first, {"q": "sure"}) == ("hit", "memory", None)
    async with running(stage, redis_url=redis_server.url, **MEMORY) as second:
        assert await confidence(second, unsure) == ("hit", "pod", "0.25")  # from Redis
    assert stage.calls["/"] == 3


@pytest.fixture
def shared_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


def shared(server: RedisServer, key: str = "pipeline-secret") -> dict[str, object]:
    return {"shared_redis_url": server.url, "shared_cache_key": key}


async def test_replicas_share_answers_through_the_shared_tier(
    stage: Stage,
    redis_server: RedisServer,
    shared_redis: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    other_pod = RedisServer()  # the second replica's own sidecar
    try:
        async with running(stage, redis_url=redis_server.url, **shared(shared_redis)) as first:
            assert await ask(client, first, {"q": "warm"}) == (200, "miss", None)
            await first.stored()
        assert len(shared_redis.keys()) == 1
        async with running(stage, redis_url=other_pod.url, **shared(shared_redis)) as second:
            assert await ask(client, second, {"q": "warm"}) == (200, "hit", "shared")
            await second.stored()  # the fill runs after the answer
            assert await ask(client, second, {"q": "warm"}) == (200, "hit", "pod")  # filled
        assert stage.calls["/"] == 1
    finally:
        other_pod.close()


async def test_another_pipelines_key_neither_reads_nor_plants_in_the_shared_tier(
    stage: Stage,
    redis_server: RedisServer,
    shared_redis: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    async with running(stage, redis_url=redis_server.url, **shared(shared_redis, "a")) as ours:
        await ask(client, ours, {"q": "private"})
        await ours.stored()
    (key,) = shared_redis.keys()
    stored = shared_redis.client.get(key)
    redis_server.client.flushall()  # only the shared tier holds it now
    # Read with another Pipeline's key: a miss, and the entry is left exactly as it was.
    foreign = RedisCache(
        shared_redis.url, ttl_seconds=60, max_entry_bytes=1 << 20, sign_key=signing_key("b")
    )
    try:
        assert (await foreign.lookup(key)).lookup is Lookup.MISS
    finally:
        await foreign.close()
    assert shared_redis.client.get(key) == stored
    intruder_pod = RedisServer()
    try:
        options = {"redis_url": intruder_pod.url, **shared(shared_redis, "b")}
        async with running(stage, **options) as intruder:
            # Same request, same key material: there, but not signed with "b".
            assert (await ask(client, intruder, {"q": "private"}))[1] == "miss"
            await intruder.stored()
        assert shared_redis.client.get(key) != stored  # the intruder wrote its own answer
    finally:
        intruder_pod.close()
    # Neither the intruder's validly signed entry nor one planted unsigned is served as ours.
    for planted in (None, b"PSC1" + b"\0" * 40):
        if planted is not None:
            shared_redis.client.set(key, planted)
        redis_server.client.flushall()
        async with running(stage, redis_url=redis_server.url, **shared(shared_redis, "a")) as ours:
            assert (await ask(client, ours, {"q": "private"}))[1] == "miss"
            await ours.stored()
    assert stage.calls["/"] == 4


async def test_the_shared_tier_without_its_signing_key_is_a_config_error() -> None:
    argv = ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2"]
    with pytest.raises(ConfigError, match="SHARED_CACHE_KEY"):
        parse_config([*argv, "--shared-redis-url", "redis://127.0.0.1:6379/0"], environ={})
