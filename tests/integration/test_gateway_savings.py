"""Savings accounting and token usage through a real gateway in front of a real stage server.

What a cache hit, a coalesced request and a batch saved is counted in replica-seconds and USD
(penstock_stage_saved_*_total by reason) and on the request's span; the tokens a stage reports
are counted by type. The stage sleeps a known time per call, so the figures have known sizes.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.test_gateway import Stage, client, post, running, sample, stage
from tests.support import RedisServer

pytestmark = [pytest.mark.integration]
__all__ = ["client", "stage"]  # fixtures

HOURLY = 3.6  # the gateway config's hourly cost: a replica-second costs 0.001 USD


def saved(gateway: object, reason: str, unit: str = "seconds") -> float:
    return sample(
        gateway,  # type: ignore[arg-type]
        f"penstock_stage_saved_{unit}_total",
        cost_center="search-team",
        reason=reason,
    )


async def test_cache_hits_save_what_a_call_takes(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.1
    exporter = InMemorySpanExporter()
    async with running(stage, redis_url=redis_server.url, exporter=exporter) as gateway:
        await post(client, gateway, {"q": 1})
        assert saved(gateway, "cache") == 0  # a miss saves nothing
        for _ in range(3):
            assert (await post(client, gateway, {"q": 1}))[2] == "hit"
        seconds = saved(gateway, "cache")
        assert 3 * 0.1 <= seconds < 3 * 0.5
        assert saved(gateway, "cache", "usd") == pytest.approx(seconds * HOURLY / 3600)
        assert gateway._provider is not None
        gateway._provider.force_flush()
        spans = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    assert "penstock.saved.reason" not in spans[0]
    assert {s["penstock.saved.reason"] for s in spans[1:]} == {"cache"}
    assert float(spans[1]["penstock.saved.seconds"]) >= 0.1  # type: ignore[arg-type]
    assert float(spans[1]["penstock.saved.usd"]) > 0  # type: ignore[arg-type]


async def test_a_hit_before_any_call_saves_nothing_it_cannot_measure(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as first:
        await post(client, first, {"q": 2})
    async with running(stage, redis_url=redis_server.url) as restarted:
        assert (await post(client, restarted, {"q": 2}))[2] == "hit"
        assert saved(restarted, "cache") == 0


async def test_coalesced_requests_save_the_shared_call(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with running(stage) as gateway:
        await asyncio.gather(*(post(client, gateway, {"same": 1}) for _ in range(10)))
        assert stage.calls["/"] == 1
        assert 9 * 0.3 <= saved(gateway, "coalesced") < 9 * 0.6
        assert saved(gateway, "cache") == 0


async def test_batching_saves_what_items_alone_would_have_taken(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    # The stage takes 0.1 s per batch whatever its size: one item alone takes 0.1 s, so a
    # batch of 8 saves 7 x 0.1 s once two batch sizes were seen.
    stage.delay = 0.1
    async with running(
        stage, batch_path="/batch", batch_max_size=8, batch_max_latency_ms=100
    ) as gateway:
        await post(client, gateway, {"alone": 1})
        assert saved(gateway, "batching") == 0  # one size seen: no model yet
        await asyncio.gather(*(post(client, gateway, {"i": i}) for i in range(8)))
        assert [len(batch) for batch in stage.batches] == [1, 8]
        assert 7 * 0.1 * 0.8 <= saved(gateway, "batching") <= 7 * 0.1 * 1.5


async def test_token_usage_from_a_header_or_the_answer(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    exporter = InMemorySpanExporter()
    async with running(stage, exporter=exporter) as gateway:
        header = "input_tokens=12, output_tokens=40"
        await post(client, gateway, {"tokens": {"header": header}})
        body = {"prompt_tokens": 5, "completion_tokens": 7}
        await post(client, gateway, {"tokens": {"in_body": body}})
        await post(client, gateway, {"tokens": {"header": "input_tokens=lots"}})  # ignored
        labels = {"cost_center": "search-team"}
        assert sample(gateway, "penstock_stage_tokens_total", type="input", **labels) == 17
        assert sample(gateway, "penstock_stage_tokens_total", type="output", **labels) == 47
        assert gateway._provider is not None
        gateway._provider.force_flush()
        spans = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    assert spans[0]["gen_ai.usage.input_tokens"] == 12
    assert spans[0]["gen_ai.usage.output_tokens"] == 40
    assert spans[1]["gen_ai.usage.output_tokens"] == 7
    assert "gen_ai.usage.input_tokens" not in spans[2]
