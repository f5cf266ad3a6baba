"""Item-level caching on a stage's batch path, through a real gateway, a real redis-server and
a real stage: each item of a batch is looked up like a ``POST /`` of it, only the distinct
misses reach the stage's batch path, and the answer comes back in the items' order."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.integration.test_gateway import Stage, client, running, sample, stage, url
from tests.support import RedisServer

pytestmark = [pytest.mark.integration]
__all__ = ["client", "stage"]  # fixtures
BATCHED = {"batch_path": "/batch", "batch_max_size": 64, "batch_max_latency_ms": 5}


async def send(
    session: aiohttp.ClientSession, gateway: object, items: object, **headers: str
) -> tuple[int, object, dict[str, str]]:
    async with session.post(url(gateway, "/batch"), json=items, headers=headers) as response:  # type: ignore[arg-type]
        return response.status, json.loads(await response.read()), dict(response.headers)


async def test_a_batch_with_repeats_sends_each_distinct_item_once_and_keeps_the_order(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        items = [{"text": f"t{index % 16}"} for index in range(32)]  # 16 distinct, each twice
        status, answer, headers = await send(client, gateway, items)
        assert status == 200
        assert answer == [{"echo": item} for item in items]
        assert sum(len(batch) for batch in stage.batches) == 16
        assert headers["X-Penstock-Cache"] == "miss"
        assert headers["X-Penstock-Cache-Items"] == "16/32"
        await gateway.stored()

        # The same texts again, with new ones among them: only the new ones reach the stage.
        stage.batches.clear()
        again = [*items[:8], {"text": "new-a"}, *items[8:16], {"text": "new-b"}]
        status, answer, headers = await send(client, gateway, again)
        assert status == 200
        assert answer == [{"echo": item} for item in again]
        assert stage.batches == [[{"text": "new-a"}, {"text": "new-b"}]]
        assert headers["X-Penstock-Cache-Items"] == "16/18"
        await gateway.stored()

        # All known: no stage call at all.
        stage.batches.clear()
        status, answer, headers = await send(client, gateway, items[::-1])
        assert (status, headers["X-Penstock-Cache"], stage.batches) == (200, "hit", [])
        assert answer == [{"echo": item} for item in items[::-1]]


async def test_batches_and_single_requests_share_entries(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        async with client.post(url(gateway), json={"text": "alone"}) as response:
            single = await response.json()
        await gateway.stored()
        status, answer, headers = await send(client, gateway, [{"text": "alone"}])
        assert (status, answer, headers["X-Penstock-Cache"]) == (200, [single], "hit")
        status, answer, headers = await send(client, gateway, [{"text": "batched"}])
        await gateway.stored()
        async with client.post(url(gateway), json={"text": "batched"}) as response:
            assert response.headers["X-Penstock-Cache"] == "hit"
            assert await response.json() == answer[0]  # type: ignore[index]


async def test_an_item_keyed_on_the_callers_credentials_is_never_anothers(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        await send(client, gateway, [{"text": "secret"}], Authorization="Bearer alice")
        await gateway.stored()
        stage.batches.clear()
        _, _, headers = await send(
            client, gateway, [{"text": "secret"}], Authorization="Bearer bob"
        )
        assert headers["X-Penstock-Cache-Items"] == "0/1"
        assert stage.batches == [[{"text": "secret"}]]


async def test_a_caller_asking_for_fresh_answers_gets_every_item_from_the_stage(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        await send(client, gateway, [{"text": "x"}, {"text": "y"}])
        await gateway.stored()
        stage.batches.clear()
        _, _, headers = await send(
            client, gateway, [{"text": "x"}], **{"Cache-Control": "no-cache"}
        )
        assert headers["X-Penstock-Cache"] == "bypass"
        assert stage.batches == [[{"text": "x"}]]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{}", "non-empty JSON array"),
        (b"[]", "non-empty JSON array"),
        (b"[1, NaN]", "NaN"),
        (b'[{"a": 1, "a": 2}]', "more than once"),
    ],
)
async def test_a_batch_that_is_no_array_of_items_is_a_400_naming_it(
    stage: Stage,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    body: bytes,
    problem: str,
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        headers = {"Content-Type": "application/json"}
        async with client.post(url(gateway, "/batch"), data=body, headers=headers) as response:
            assert response.status == 400
            text = await response.text()
        assert "batch" in text and problem in text, text
        assert stage.calls["/batch"] == 0
        assert sample(gateway, "penstock_stage_requests_total", outcome="client_error") == 1


async def test_a_failed_batch_call_fails_the_batch_and_stores_nothing(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, **BATCHED) as gateway:
        status, answer, _ = await send(client, gateway, [{"text": "ok"}, {"bad": True}])
        assert status == 502, answer
        await gateway.stored()
        assert redis_server.keys() == []
