"""The cache tiers through real gateways and real redis-servers: the in-process tier before the
pod's Redis (filled on the way back, answering when Redis is gone, never past its source's TTL),
and the shared tier every replica reads (signed: another Pipeline can neither read nor plant)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import redis

from penstock.dataplane.gateway.cache import Lookup, RedisCache, cache_key, signing_key
from penstock.dataplane.gateway.config import ConfigError, GatewayConfig, parse_config
from penstock.dataplane.gateway.server import Gateway
from tests.integration.test_gateway import Stage, client, running, sample, stage, url
from tests.support import MemcachedServer, RedisClusterServer, RedisServer

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


# --------------------------------------------------------------------------- across replicas


@asynccontextmanager
async def replicas(
    stage: Stage, shared_redis: RedisServer, count: int, **overrides: object
) -> AsyncIterator[list[Gateway]]:
    """``count`` gateways of one stage sharing ``shared_redis`` (no pod tier), their lease
    notices subscribed. Redis may take up to a second here (the product's 50 ms would turn a
    loaded test machine's slow answers into misses, and this test is about leases)."""
    overrides = {"redis_timeout_ms": 1000, **shared(shared_redis), **overrides}
    async with contextlib.AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(running(stage, **overrides)) for _ in range(count)
        ]
        for gateway in gateways:
            assert gateway.leases is not None
            await asyncio.wait_for(gateway.leases.listening.wait(), 5)
        yield gateways


def leases(gateways: list[Gateway], result: str) -> float:
    name = "penstock_stage_shared_coalescing_total"
    return sum(sample(gateway, name, result=result) for gateway in gateways)


async def test_identical_requests_spread_over_replicas_make_one_stage_call(
    stage: Stage, shared_redis: RedisServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with replicas(stage, shared_redis, 4) as gateways:

        async def one(index: int) -> tuple[int, bytes, str]:
            target = gateways[index % len(gateways)]
            async with client.post(url(target), json={"q": "everyone"}) as response:
                return response.status, await response.read(), response.headers["X-Penstock-Cache"]

        answers = await asyncio.gather(*(one(index) for index in range(50)))
        assert stage.calls["/"] == 1
        assert {(status, body) for status, body, _ in answers} == {answers[0][:2]}
        assert answers[0][0] == 200
        assert leases(gateways, "led") == 1
        assert leases(gateways, "joined") == 3  # each other replica's first caller
        assert leases(gateways, "alone") == 0
        # The 46 others joined their own replica's first caller.
        coalesced = sum(sample(g, "penstock_stage_coalesced_requests_total") for g in gateways)
        assert coalesced == 49
        for gateway in gateways:
            await gateway.stored()
        assert shared_redis.client.keys("penstock:lease:*") == []  # released


async def test_a_dead_holders_lease_expires_and_a_waiting_replica_calls_the_stage(
    stage: Stage, shared_redis: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with replicas(stage, shared_redis, 1) as (gateway,):
        assert gateway.leases is not None
        body = {"q": "orphaned"}
        # A replica took the lease and died: nobody renews it, nobody will say it is done.
        key = answer_key(body)
        shared_redis.client.set(gateway.leases.lease_name(key), "dead", px=500)
        started = time.monotonic()
        async with client.post(url(gateway), json=body) as response:
            assert response.status == 200
            assert response.headers["X-Penstock-Cache"] == "miss"
        waited = time.monotonic() - started
        assert 0.4 <= waited <= gateway.leases.lease_seconds + 1.0
        assert stage.calls["/"] == 1
        assert leases([gateway], "led") == 1


async def test_an_answer_that_may_not_be_shared_sends_the_waiting_replicas_to_the_stage(
    stage: Stage, shared_redis: RedisServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with replicas(stage, shared_redis, 2) as gateways:

        async def one(gateway: Gateway) -> int:
            async with client.post(url(gateway), json={"private": True}) as response:
                await response.read()
                return response.status

        first = asyncio.ensure_future(one(gateways[0]))
        await asyncio.sleep(0.1)  # the first replica holds the lease
        assert await one(gateways[1]) == 200
        assert await first == 200
        assert stage.calls["/"] == 2  # Cache-Control: private: each caller its own answer
        assert leases(gateways, "led") == 1
        assert leases(gateways, "alone") == 1
        assert leases(gateways, "joined") == 0


async def test_another_pipeline_on_the_same_redis_never_holds_up_our_requests(
    stage: Stage, shared_redis: RedisServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with (
        replicas(stage, shared_redis, 1) as (ours,),
        replicas(stage, shared_redis, 1, shared_cache_key="other") as (theirs,),
    ):
        assert ours.leases is not None and theirs.leases is not None
        key = answer_key({"q": "same text"})
        assert ours.leases.lease_name(key) != theirs.leases.lease_name(key)

        async def one(gateway: Gateway) -> str:
            async with client.post(url(gateway), json={"q": "same text"}) as response:
                await response.read()
                return response.headers["X-Penstock-Cache"]

        assert await asyncio.gather(one(ours), one(theirs)) == ["miss", "miss"]
        assert stage.calls["/"] == 2  # neither waited on the other's lease
        assert leases([ours, theirs], "led") == 2


async def test_without_the_notices_a_replica_calls_alone(
    stage: Stage, shared_redis: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with replicas(stage, shared_redis, 1) as (gateway,):
        assert gateway.leases is not None
        shared_redis.kill()
        await asyncio.sleep(0.2)
        assert not gateway.leases.listening.is_set()
        async with client.post(url(gateway), json={"q": "no redis"}) as response:
            assert response.status == 200
        assert stage.calls["/"] == 1
        assert leases([gateway], "alone") == 1


def answer_key(body: object) -> str:
    """The cache key the gateways of these tests give ``body`` from aiohttp's client (it sends
    ``Accept: */*``, a key header by default)."""
    return cache_key(
        namespace="search",
        pipeline="rag",
        stage="embed",
        stage_image="registry.example/embedder:2.0",
        model_version="",
        method="POST",
        path="/",
        body=body,
        headers={"Accept": "*/*"},
        key_headers=GatewayConfig.cache_key_headers,
    )


# --------------------------------------------------------------------------- on Memcached


@pytest.fixture
def memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer()
    yield server
    server.close()


def on_memcached(server: MemcachedServer, key: str = "pipeline-secret") -> dict[str, object]:
    return {"shared_redis_url": server.url, "shared_cache_key": key, "redis_timeout_ms": 1000}


async def test_replicas_share_answers_through_memcached(
    stage: Stage, memcached: MemcachedServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, **MEMORY, **on_memcached(memcached)) as first:
        assert first.leases is None  # no SET NX / PUBLISH there: coalescing stays per replica
        assert await ask(client, first, {"q": "warm"}) == (200, "miss", None)
        await first.stored()
    assert memcached.get(answer_key({"q": "warm"})) is not None
    async with running(stage, **MEMORY, **on_memcached(memcached)) as second:
        assert await ask(client, second, {"q": "warm"}) == (200, "hit", "shared")
        await second.stored()  # the fill runs after the answer
        assert await ask(client, second, {"q": "warm"}) == (200, "hit", "memory")
    assert stage.calls["/"] == 1


async def test_the_memory_tier_never_outlives_the_memcached_entry_it_was_filled_from(
    stage: Stage, memcached: MemcachedServer, client: aiohttp.ClientSession
) -> None:
    options = {**MEMORY, **on_memcached(memcached), "cache_ttl_seconds": 2}
    async with running(stage, **on_memcached(memcached), cache_ttl_seconds=2) as first:
        await ask(client, first, {"q": "short"})
        await first.stored()
    async with running(stage, **options) as second:
        assert await ask(client, second, {"q": "short"}) == (200, "hit", "shared")
        await second.stored()
        await asyncio.sleep(2.2)  # Memcached's entry is gone: so is the memory tier's copy
        assert (await ask(client, second, {"q": "short"}))[1] == "miss"
    assert stage.calls["/"] == 2


async def test_another_pipelines_memcached_entry_is_a_miss_and_a_planted_one_too(
    stage: Stage, memcached: MemcachedServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, **on_memcached(memcached, "a")) as ours:
        await ask(client, ours, {"q": "private"})
        await ours.stored()
    key = answer_key({"q": "private"})
    async with running(stage, **on_memcached(memcached, "b")) as intruder:
        assert (await ask(client, intruder, {"q": "private"}))[1] == "miss"
        await intruder.stored()
    for planted in (None, b"PSS1" + b"\0" * 80, b"PSC1" + b"\0" * 40):
        if planted is not None:
            memcached.set(key, planted)
        async with running(stage, **on_memcached(memcached, "a")) as ours:
            assert (await ask(client, ours, {"q": "private"}))[1] == "miss"
            await ours.stored()
    assert stage.calls["/"] == 5


async def test_a_dead_memcached_is_a_counted_error_and_the_stage_answers(
    stage: Stage, memcached: MemcachedServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, **on_memcached(memcached)) as gateway:
        memcached.kill()
        assert await ask(client, gateway, {"q": "gone"}) == (200, "bypass", None)
        errors = sample(
            gateway, "penstock_stage_cache_tier_lookups_total", tier="shared", result="error"
        )
        assert errors == 1


@pytest.mark.parametrize(
    "url", ["memcached://127.0.0.1:11211/0", "memcached://user:pw@host", "memcached://"]
)
def test_a_memcached_url_with_a_database_or_credentials_is_a_config_error(url: str) -> None:
    argv = ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2"]
    with pytest.raises(ConfigError, match="memcached://HOST"):
        parse_config([*argv, "--shared-redis-url", url], environ={"SHARED_CACHE_KEY": "k"})


# --------------------------------------------------------------------------- on a Redis Cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    server = RedisClusterServer()
    yield server
    server.close()


def on_cluster(server: RedisClusterServer, key: str = "pipeline-secret") -> dict[str, object]:
    return {
        "shared_redis_url": server.url,
        "shared_redis_password": server.password,
        "shared_redis_cluster": True,
        "shared_cache_key": key,
        "redis_timeout_ms": 1000,  # a loaded test machine; the product's 50 ms is for pods
    }


async def test_replicas_share_answers_through_a_redis_cluster(
    stage: Stage, redis_cluster: RedisClusterServer, client: aiohttp.ClientSession
) -> None:
    questions = [{"q": f"spread {index}"} for index in range(12)]
    async with running(stage, **on_cluster(redis_cluster)) as first:
        for question in questions:
            assert await ask(client, first, question) == (200, "miss", None)
        await first.stored()
    # The entries are spread over the nodes by their slots, each signed with the key.
    per_node = [
        len(redis.Redis(host="127.0.0.1", port=port, password=redis_cluster.password).keys("*"))
        for port in redis_cluster.ports
    ]
    assert sum(per_node) >= 12 and all(per_node), per_node
    async with running(stage, **on_cluster(redis_cluster)) as second:
        for question in questions:
            assert await ask(client, second, question) == (200, "hit", "shared")
    async with running(stage, **on_cluster(redis_cluster, key="another-pipeline")) as other:
        assert await ask(client, other, questions[0]) == (200, "miss", None)
    assert stage.calls["/"] == 13


async def test_identical_requests_over_replicas_on_a_cluster_make_one_stage_call(
    stage: Stage, redis_cluster: RedisClusterServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with contextlib.AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(running(stage, **on_cluster(redis_cluster)))
            for _ in range(3)
        ]
        for gateway in gateways:
            assert gateway.leases is not None
            await asyncio.wait_for(gateway.leases.listening.wait(), 5)

        async def one(index: int) -> int:
            target = gateways[index % len(gateways)]
            async with client.post(url(target), json={"q": "on the cluster"}) as response:
                await response.read()
                return response.status

        assert set(await asyncio.gather(*(one(index) for index in range(30)))) == {200}
        assert stage.calls["/"] == 1
        assert leases(gateways, "led") == 1 and leases(gateways, "joined") == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--shared-redis-url", "memcached://127.0.0.1:11211", "--shared-redis-cluster", "true"],
        ["--shared-redis-url", "redis://127.0.0.1:7000/2", "--shared-redis-cluster", "true"],
        ["--shared-redis-url", "redis://127.0.0.1:7000", "--shared-redis-cluster", "yes"],
    ],
)
def test_a_cluster_flag_that_cannot_hold_is_a_config_error(argv: list[str]) -> None:
    base = ["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1"]
    with pytest.raises(ConfigError, match="shared-redis-cluster"):
        parse_config(base + argv, {"SHARED_CACHE_KEY": "k"})
