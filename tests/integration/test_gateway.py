"""Integration tests: the stage gateway against a real redis-server and real stage servers.

Everything listens on 127.0.0.1: a redis-server process started per test, small aiohttp stage
apps on free ports (counting their calls), and the gateway itself, in-process on its own
ports or as a `python -m penstock.dataplane.gateway` subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from penstock.dataplane.gateway.config import GatewayConfig, HostPort
from penstock.dataplane.gateway.server import Gateway
from tests.support import RedisServer, ScriptServer, free_port

pytestmark = [
    pytest.mark.integration,
]

REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --------------------------------------------------------------------------- stage


class Stage:
    """A real HTTP stage: JSON echo at POST /, batch endpoint, stream, slow and crash paths."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.healthy = True
        self.warm_fails = False
        self.delay = 0.0
        self.batch_mode = "ok"
        self.batches: list[list[Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def root(self, request: web.Request) -> web.StreamResponse:
        self.calls["/"] += 1
        self.headers.append(dict(request.headers))
        body = await request.json()
        await asyncio.sleep(self.delay)
        if isinstance(body, dict) and "status" in body:
            return web.json_response({"failed": True}, status=int(body["status"]))
        if isinstance(body, dict) and body.get("crash"):
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(1)
        if isinstance(body, dict) and "tokens" in body:  # an LLM stage reporting its usage
            used = body["tokens"]
            if used.get("in_body"):
                return web.json_response({"text": "ok", "usage": used["in_body"]})
            return web.json_response({"text": "ok"}, headers={"X-Penstock-Usage": used["header"]})
        if isinstance(body, dict) and "confidence" in body:  # a cascade's light variant
            headers = {"X-Penstock-Confidence": body["confidence"]}
            return web.json_response({"unsure": body, "call": self.calls["/"]}, headers=headers)
        if isinstance(body, dict) and body.get("private"):
            return web.json_response({"mine": True}, headers={"Cache-Control": "private"})
        if isinstance(body, dict) and body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for index in range(3):
                await response.write(f"data: {index} {time.monotonic()}\n\n".encode())
                await asyncio.sleep(0.3)
            await response.write_eof()
            return response
        return web.json_response({"echo": body, "call": self.calls["/"]})

    async def batch(self, request: web.Request) -> web.Response:
        self.calls["/batch"] += 1
        items = await request.json()
        self.batches.append(items)
        await asyncio.sleep(self.delay)
        answers = [{"echo": item} for item in items]
        if self.batch_mode == "short" or any(
            isinstance(item, dict) and item.get("bad") for item in items
        ):
            answers = answers[:-1]
        if self.batch_mode == "object":
            return web.json_response({"answers": answers})
        return web.json_response(answers)

    async def healthz(self, request: web.Request) -> web.Response:
        self.calls["/healthz"] += 1
        return web.Response(status=200 if self.healthy else 503, text="ok")

    async def warm(self, request: web.Request) -> web.Response:
        self.calls["/warm"] += 1
        await request.read()
        return web.json_response({"warm": True}, status=500 if self.warm_fails else 200)

    async def other(self, request: web.Request) -> web.Response:
        self.calls[request.path] += 1
        data = await request.read()
        return web.Response(
            body=data or b"no body",
            headers={"X-Seen-Connection": request.headers.get("Connection", "")},
        )

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/", self.root)
        app.router.add_post("/batch", self.batch)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/warm", self.warm)
        app.router.add_route("*", "/other/{tail:.*}", self.other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or free_port())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    server = Stage()
    await server.start()
    yield server
    await server.stop()


# --------------------------------------------------------------------------- gateway


def gateway_config(stage: Stage, **overrides: Any) -> GatewayConfig:
    config = GatewayConfig(
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        upstream=stage.url,
        pipeline="rag",
        stage="embed",
        namespace="search",
        cost_center="search-team",
        hourly_cost=3.6,
        stage_image="registry.example/embedder:2.0",
        timeout_seconds=5.0,
        health_interval_seconds=0.1,
    )
    return replace(config, **overrides)


@asynccontextmanager
async def running(
    stage: Stage, *, wait_ready: bool = True, exporter: Any = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    gateway = Gateway(gateway_config(stage, **overrides), span_exporter=exporter)
    await gateway.start()
    try:
        if wait_ready:
            deadline = time.monotonic() + 10
            while not gateway.ready:
                assert time.monotonic() < deadline, gateway.not_ready_reason
                await asyncio.sleep(0.01)
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(gateway: Gateway, path: str = "/") -> str:
    return f"http://127.0.0.1:{gateway.port}{path}"


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    base = {"namespace": "search", "pipeline": "rag", "stage": "embed"}
    value = gateway.metrics.registry.get_sample_value(name, {**base, **labels})
    return value or 0.0


async def post(
    client: aiohttp.ClientSession, gateway: Gateway, body: Any, **headers: str
) -> tuple[int, Any, str]:
    async with client.post(url(gateway), json=body, headers=headers) as response:
        answer = (
            response.status,
            await response.json(),
            response.headers.get("X-Penstock-Cache", ""),
        )
    await gateway.stored()  # the cache store runs after the answer: deterministic tests
    return answer


# --------------------------------------------------------------------------- cache


async def test_second_identical_request_is_a_cache_hit(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        status, first, cache = await post(client, gateway, {"text": "hi", "k": [1, 2]})
        assert (status, cache) == (200, "miss")
        status, second, cache = await post(client, gateway, {"k": [1, 2], "text": "hi"})
        assert (status, cache) == (200, "hit")
        assert second == first
        assert stage.calls["/"] == 1
        status, _, cache = await post(client, gateway, {"text": "other"})
        assert (status, cache, stage.calls["/"]) == (200, "miss", 2)
        assert len(redis_server.keys()) == 2
        ttl = redis_server.client.ttl(redis_server.keys()[0])
        assert 3500 < ttl <= 3600
        assert sample(gateway, "penstock_stage_cache_lookups_total", result="hit") == 1
        assert sample(gateway, "penstock_stage_cache_lookups_total", result="miss") == 2
        # a cache hit holds no replica: only the two stage calls cost anything
        assert sample(gateway, "penstock_stage_requests_total", outcome="ok") == 3


async def test_key_headers_and_ttl(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, cache_ttl_seconds=1) as gateway:
        assert (await post(client, gateway, {"a": 1}, Accept="application/json"))[2] == "miss"
        assert (await post(client, gateway, {"a": 1}, Accept="text/plain"))[2] == "miss"
        assert (await post(client, gateway, {"a": 1}, Accept="text/plain"))[2] == "hit"
        await asyncio.sleep(1.2)
        assert (await post(client, gateway, {"a": 1}, Accept="text/plain"))[2] == "miss"
        assert stage.calls["/"] == 3


async def test_no_cache_and_no_store(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        await post(client, gateway, {"q": 1})
        _, answer, cache = await post(client, gateway, {"q": 1}, **{"Cache-Control": "no-cache"})
        assert cache == "bypass" and answer["call"] == 2  # fresh answer from the stage
        _, _, cache = await post(client, gateway, {"q": 2}, **{"Cache-Control": "no-store"})
        assert cache == "miss"
        _, _, cache = await post(client, gateway, {"q": 2})
        assert cache == "miss"  # nothing was stored
        assert stage.calls["/"] == 4


async def test_errors_and_streams_are_not_cached(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        for _ in range(2):
            status, _, cache = await post(client, gateway, {"status": 500})
            assert (status, cache) == (500, "miss")
        for _ in range(2):
            async with client.post(url(gateway), json={"stream": True}) as response:
                await response.read()
                assert response.headers["X-Penstock-Cache"] == "miss"
        for _ in range(2):
            status, _, cache = await post(client, gateway, {"private": True})
            assert (status, cache) == (200, "miss")
        assert stage.calls["/"] == 6
        assert redis_server.keys() == []


async def test_oversized_entries_are_not_stored(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url, cache_max_entry_bytes=100) as gateway:
        big = {"text": "x" * 200}
        assert (await post(client, gateway, big))[2] == "miss"
        assert (await post(client, gateway, big))[2] == "miss"
        assert stage.calls["/"] == 2
        assert sample(gateway, "penstock_stage_cache_stores_total", result="too_large") == 2


async def test_redis_killed_mid_run_means_bypass_not_failure(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        await post(client, gateway, {"n": 0})
        assert (await post(client, gateway, {"n": 0}))[2] == "hit"
        redis_server.kill()
        for number in range(20):
            status, answer, cache = await post(client, gateway, {"n": number % 3})
            assert status == 200, answer
            assert cache == "bypass"
            assert answer["echo"] == {"n": number % 3}
        assert sample(gateway, "penstock_stage_cache_lookups_total", result="error") >= 20
        assert sample(gateway, "penstock_stage_requests_total", outcome="ok") == 22


async def test_stopped_redis_is_slow_redis_and_bypassed(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        await post(client, gateway, {"warm": "connection"})
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            for number in range(10):
                status, _, cache = await post(client, gateway, {"n": number})
                assert (status, cache) == (200, "bypass")
            assert time.monotonic() - started < 2.0  # 50 ms timeouts, then skipped for 1 s
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert sample(gateway, "penstock_stage_cache_lookups_total", result="error") == 10


async def test_full_redis_is_counted_and_requests_succeed(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    full = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    try:
        filler = 0
        while True:
            try:
                full.client.set(f"filler:{filler}", b"x" * 1000)
            except redis.ResponseError:
                break
            filler += 1
        async with running(stage, redis_url=full.url) as gateway:
            for _ in range(2):
                status, _, cache = await post(client, gateway, {"q": "full"})
                assert status == 200
                assert cache in ("miss", "bypass")
            assert stage.calls["/"] == 2
            assert sample(gateway, "penstock_stage_cache_stores_total", result="error") >= 1
    finally:
        full.close()


async def test_corrupted_or_truncated_entries_are_never_served(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, redis_url=redis_server.url) as gateway:
        _, first, _ = await post(client, gateway, {"doc": "original"})
        [key] = redis_server.keys()
        stored = redis_server.client.get(key)
        assert isinstance(stored, bytes)
        damaged = stored.replace(b"original", b"0riginal")
        for bad in (damaged, stored[:-3], stored + b"tail", b"garbage"):
            redis_server.client.set(key, bad)
            status, answer, cache = await post(client, gateway, {"doc": "original"})
            assert status == 200
            assert cache == "bypass"
            assert answer["echo"] == {"doc": "original"}
            assert answer["call"] > first["call"]  # from the stage, not the damaged entry
            await asyncio.sleep(1.1)  # the gateway skips Redis for 1 s after an error
        assert sample(gateway, "penstock_stage_cache_lookups_total", result="error") == 4
        assert stage.calls["/"] == 5


# --------------------------------------------------------------------------- coalescing


async def test_identical_concurrent_requests_share_one_stage_call(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with running(stage) as gateway:
        results = await asyncio.gather(*(post(client, gateway, {"same": 1}) for _ in range(10)))
        assert stage.calls["/"] == 1
        assert {json.dumps(answer) for _, answer, _ in results} == {
            json.dumps({"echo": {"same": 1}, "call": 1})
        }
        assert sample(gateway, "penstock_stage_coalesced_requests_total") == 9
        # different requests are not coalesced
        await asyncio.gather(*(post(client, gateway, {"other": n}) for n in range(3)))
        assert stage.calls["/"] == 4


async def test_coalesced_callers_share_errors_too(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.3
    async with running(stage) as gateway:
        results = await asyncio.gather(*(post(client, gateway, {"status": 500}) for _ in range(5)))
        assert [status for status, _, _ in results] == [500] * 5
        assert stage.calls["/"] == 1
        async with running(stage, timeout_seconds=0.1) as slow:
            timeouts = await asyncio.gather(*(post(client, slow, {"t": 1}) for _ in range(5)))
        assert [status for status, _, _ in timeouts] == [504] * 5
        assert stage.calls["/"] == 2


# --------------------------------------------------------------------------- batching


async def test_concurrent_requests_are_batched_in_order(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.05
    async with running(
        stage, batch_path="/batch", batch_max_size=8, batch_max_latency_ms=50
    ) as gateway:
        results = await asyncio.gather(*(post(client, gateway, {"i": i}) for i in range(20)))
        for index, (status, answer, _) in enumerate(results):
            assert status == 200
            assert answer == {"echo": {"i": index}}
        assert stage.calls["/"] == 0
        assert 3 <= stage.calls["/batch"] <= 5
        assert sum(len(batch) for batch in stage.batches) == 20
        assert max(len(batch) for batch in stage.batches) == 8
        assert sample(gateway, "penstock_stage_batch_size_count") == stage.calls["/batch"]
        assert sample(gateway, "penstock_stage_batch_size_sum") == 20


async def test_malformed_batch_answer_fails_exactly_that_batch(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(
        stage, batch_path="/batch", batch_max_size=4, batch_max_latency_ms=1000
    ) as gateway:
        bad = await asyncio.gather(
            *(post(client, gateway, {"i": i, "bad": i == 2}) for i in range(4))
        )
        good = await asyncio.gather(*(post(client, gateway, {"i": i}) for i in range(4)))
        for status, answer, _ in bad:
            assert status == 502
            assert answer["stage"] == "embed"
            assert "3 items for 4 inputs" in answer["error"]
        assert [status for status, _, _ in good] == [200] * 4
        stage.batch_mode = "object"
        not_array = await asyncio.gather(*(post(client, gateway, {"j": i}) for i in range(4)))
        for status, answer, _ in not_array:
            assert status == 502
            assert "not an array" in answer["error"]


async def test_batching_rejects_bodies_that_are_not_json(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage, batch_path="/batch") as gateway:
        response = await client.post(url(gateway), data=b"{not json")
        assert response.status == 400
        body = await response.json()
        assert "not valid JSON" in body["error"]
        assert body["stage"] == "embed"


# --------------------------------------------------------------------------- proxy


async def test_streamed_chunks_arrive_before_the_stage_finishes(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage) as gateway:
        started = time.monotonic()
        arrivals: list[float] = []
        async with client.post(url(gateway), json={"stream": True}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for chunk in response.content.iter_any():
                if chunk.strip():
                    arrivals.append(time.monotonic() - started)
        assert len(arrivals) >= 3
        assert arrivals[0] < 0.25  # the stage takes 0.9 s in all
        assert arrivals[-1] >= 0.55
        assert arrivals[1] - arrivals[0] > 0.2


async def test_other_paths_pass_through_with_bodies_and_hop_by_hop_stripped(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage) as gateway:
        payload = os.urandom(300_000)
        headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "secret"}
        async with client.put(url(gateway, "/other/x?y=1"), data=payload, headers=headers) as r:
            assert r.status == 200
            assert await r.read() == payload
            assert r.headers["X-Penstock-Cache"] == "bypass"
        async with client.get(url(gateway, "/other/get")) as r:
            assert await r.read() == b"no body"
        assert stage.calls["/other/x"] == 1


async def test_oversized_request_body_is_refused(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage, max_body_bytes=1000) as gateway:
        async with client.post(url(gateway), json={"x": "y" * 2000}) as response:
            assert response.status == 413
            body = await response.json()
            assert "1000 bytes" in body["error"] and body["stage"] == "embed"
        assert stage.calls["/"] == 0


async def test_stage_crash_is_502_naming_the_stage(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    async with running(stage, health_interval_seconds=60) as gateway:
        status, body, _ = await post(client, gateway, {"crash": True})
        assert status == 502
        assert body["stage"] == "embed"
        assert "'embed'" in body["error"]
        await stage.stop()  # the stage process is gone: connection refused
        status, body, _ = await post(client, gateway, {"after": "stop"})
        assert status == 502
        assert "cannot connect" in body["error"]
        assert sample(gateway, "penstock_stage_requests_total", outcome="upstream_error") == 2


async def test_slow_stage_is_504_naming_the_stage(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.delay = 1.0
    async with running(stage, timeout_seconds=0.2) as gateway:
        started = time.monotonic()
        status, body, _ = await post(client, gateway, {"slow": True})
        assert status == 504
        assert time.monotonic() - started < 0.9
        assert body == {"error": "stage 'embed' did not answer within 0.2s", "stage": "embed"}
        assert sample(gateway, "penstock_stage_requests_total", outcome="timeout") == 1


async def test_readiness_waits_for_healthz_and_warmup(
    stage: Stage, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stage.healthy = False
    async with running(
        stage, wait_ready=False, warmup_requests=3, warmup_path="/warm", warmup_body=b'{"w": 1}'
    ) as gateway:
        admin = f"http://127.0.0.1:{gateway.admin_port}"
        await asyncio.sleep(0.3)
        async with client.get(admin + "/ready") as response:
            assert response.status == 503
            assert "healthz" in (await response.json())["reason"]
        async with client.get(admin + "/live") as response:
            assert response.status == 200
        status, body, _ = await post(client, gateway, {"early": True})
        assert status == 503
        assert body["stage"] == "embed" and "not ready" in body["error"]
        assert stage.calls["/warm"] == 0 and stage.calls["/"] == 0

        stage.healthy = True
        deadline = time.monotonic() + 5
        while not gateway.ready:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert stage.calls["/warm"] == 3
        async with client.get(admin + "/ready") as response:
            assert response.status == 200
        assert (await post(client, gateway, {"late": True}))[0] == 200

        stage.healthy = False  # three failed checks take the gateway out of rotation
        deadline = time.monotonic() + 5
        while gateway.ready:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await post(client, gateway, {"down": True}))[0] == 503


async def test_failing_warmup_keeps_the_gateway_unready(
    stage: Stage, client: aiohttp.ClientSession
) -> None:
    stage.warm_fails = True
    async with running(stage, wait_ready=False, warmup_requests=2, warmup_path="/warm") as gw:
        await asyncio.sleep(0.5)
        assert not gw.ready
        assert "warmup request 1 answered HTTP 500" in gw.not_ready_reason
        stage.warm_fails = False
        deadline = time.monotonic() + 5
        while not gw.ready:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- telemetry


async def test_metrics_endpoint_has_the_design_names(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    stage.delay = 0.05
    async with running(
        stage, redis_url=redis_server.url, batch_path="/batch", batch_max_latency_ms=1
    ) as gateway:
        await asyncio.gather(*(post(client, gateway, {"m": 1}) for _ in range(3)))
        async with client.get(f"http://127.0.0.1:{gateway.admin_port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    labels = 'namespace="search",pipeline="rag",stage="embed"'
    for name in (
        "penstock_stage_requests_total",
        "penstock_stage_request_duration_seconds_bucket",
        "penstock_stage_inflight_requests",
        "penstock_stage_cache_lookups_total",
        "penstock_stage_coalesced_requests_total",
        "penstock_stage_batch_size_bucket",
        "penstock_stage_cost_usd_total",
    ):
        assert name in text, name
    assert f'penstock_stage_requests_total{{{labels},outcome="ok"}} 3.0' in text.replace(
        'namespace="search",outcome="ok",pipeline="rag",stage="embed"',
        f'{labels},outcome="ok"',
    )
    assert f"penstock_stage_coalesced_requests_total{{{labels}}} 2.0" in text
    assert 'cost_center="search-team"' in text
    # 0.05 s of a 3.6 USD/h replica = 0.00005 USD, shared by the three callers
    cost = sample(gateway, "penstock_stage_cost_usd_total", cost_center="search-team")
    assert 0.00004 < cost < 0.0002


async def test_spans_carry_design_attributes_and_trace_context_reaches_the_stage(
    stage: Stage, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    exporter = InMemorySpanExporter()
    async with running(stage, redis_url=redis_server.url, exporter=exporter) as gateway:
        await post(client, gateway, {"t": 1}, traceparent=TRACEPARENT)
        await post(client, gateway, {"t": 1}, traceparent=TRACEPARENT)
        assert gateway._provider is not None
        gateway._provider.force_flush()
        spans = exporter.get_finished_spans()
    assert len(spans) == 2
    trace_id = int(TRACEPARENT.split("-")[1], 16)
    miss, hit = spans
    for span in spans:
        assert span.context is not None and span.context.trace_id == trace_id
        attributes = dict(span.attributes or {})
        assert attributes["penstock.pipeline"] == "rag"
        assert attributes["penstock.stage"] == "embed"
        assert attributes["penstock.cost_center"] == "search-team"
    assert dict(miss.attributes or {})["penstock.cache.hit"] is False
    assert float(dict(miss.attributes or {})["penstock.cost.usd"]) > 0  # type: ignore[arg-type]
    assert dict(hit.attributes or {})["penstock.cache.hit"] is True
    assert dict(hit.attributes or {})["penstock.cost.usd"] == 0
    [seen] = [h for h in stage.headers if "traceparent" in h]
    assert seen["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert miss.context is not None
    assert seen["traceparent"].split("-")[2] == f"{miss.context.span_id:016x}"


async def test_batch_size_span_attribute(stage: Stage, client: aiohttp.ClientSession) -> None:
    exporter = InMemorySpanExporter()
    async with running(
        stage, exporter=exporter, batch_path="/batch", batch_max_size=3, batch_max_latency_ms=500
    ) as gateway:
        await asyncio.gather(*(post(client, gateway, {"b": i}) for i in range(3)))
        assert gateway._provider is not None
        gateway._provider.force_flush()
        sizes = [
            dict(s.attributes or {}).get("penstock.batch.size")
            for s in exporter.get_finished_spans()
        ]
    assert sizes == [3, 3, 3]


# --------------------------------------------------------------------------- the command


def test_gateway_command_runs_from_environment_and_stops_on_sigterm(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port, admin_port = free_port(), free_port()
    stage = ScriptServer(
        "import sys\n"
        "from aiohttp import web\n"
        "async def root(r):\n"
        "    return web.json_response({'echo': await r.json()})\n"
        "async def healthz(r):\n"
        "    return web.Response(text='ok')\n"
        "app = web.Application()\n"
        "app.router.add_post('/', root)\n"
        "app.router.add_get('/healthz', healthz)\n"
        "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)\n"
    )
    warm = tmp_path / "warm.json"
    warm.write_text('{"warm": true}')
    pythonpath = os.pathsep.join(
        filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")])
    )
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "PENSTOCK_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "PENSTOCK_GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "PENSTOCK_GATEWAY_UPSTREAM": stage.url,
        "PENSTOCK_GATEWAY_REDIS_URL": redis_server.url,
        "PENSTOCK_GATEWAY_WARMUP_REQUESTS": "2",
        "PENSTOCK_GATEWAY_WARMUP_BODY": str(warm),
        "PENSTOCK_GATEWAY_STAGE": "embed",
        "PENSTOCK_GATEWAY_PIPELINE": "rag",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "penstock.dataplane.gateway"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:

        async def exercise() -> None:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        async with session.get(f"http://127.0.0.1:{admin_port}/ready") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, "gateway never became ready"
                    await asyncio.sleep(0.1)
                caches = []
                for _ in range(2):
                    async with session.post(f"http://127.0.0.1:{port}/", json={"x": 1}) as r:
                        assert r.status == 200
                        assert await r.json() == {"echo": {"x": 1}}
                        caches.append(r.headers["X-Penstock-Cache"])
                assert caches == ["miss", "hit"]

        asyncio.run(exercise())
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=10)
        assert gateway.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        stage.stop()
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(5)


def test_gateway_command_refuses_bad_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "penstock.dataplane.gateway", "--listen", "x", "--upstream", "y"],
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "error: --listen" in result.stderr
    assert "Traceback" not in result.stderr
