"""Stage-to-stage streaming (``input: stream``): a generating stage's chunks reach its dependant
as they are produced, through the router (and the dependant's gateway), with backpressure,
cancellation both ways and the latency budget.

The stages are real aiohttp servers on loopback: ``gen`` writes tokens with a pause between them
and records when it wrote each and whether its client went away; ``post`` reads its request
body as it arrives and either answers each chunk at once (streaming out) or all of it at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from penstock.contract.topology import StageRoute, Topology, TopologyError, parse_topology
from penstock.dataplane.gateway.config import GatewayConfig, HostPort
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.router import Router, RouterConfig

pytestmark = pytest.mark.integration


@dataclass
class Generator:
    tokens: int = 10
    pause: float = 0.05
    size: int = 0  # bytes per token; 0: a short word
    break_after: int | None = None  # close the connection after this many tokens
    written: list[float] = field(default_factory=list)
    written_bytes: list[tuple[float, int]] = field(default_factory=list)
    client_left: bool = False
    envelopes: list[Any] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.envelopes.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        total = 0
        try:
            for index in range(self.tokens):
                if self.break_after is not None and index == self.break_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                token = b"x" * self.size if self.size else f"token{index} ".encode()
                await response.write(token)
                total += len(token)
                self.written.append(time.monotonic())
                self.written_bytes.append((time.monotonic(), total))
                if self.pause:
                    await asyncio.sleep(self.pause)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            self.client_left = True
        return response


@dataclass
class Reader:
    stream_out: bool = True
    pause: float = 0.0
    pause_once: float = 0.0  # after the first chunk
    fail_after: int | None = None  # answer 500 after this many chunks
    read_bytes: list[tuple[float, int]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.content_types.append(request.headers.get("Content-Type", ""))
        total, seen = 0, 0
        if self.stream_out:
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            async for chunk in request.content.iter_any():
                await response.write(chunk.upper())
            await response.write_eof()
            return response
        parts = []
        async for chunk in request.content.iter_any():
            seen += 1
            total += len(chunk)
            self.read_bytes.append((time.monotonic(), total))
            parts.append(chunk)
            if self.fail_after is not None and seen >= self.fail_after:
                return web.json_response({"error": "reader gave up"}, status=500)
            if self.pause:
                await asyncio.sleep(self.pause)
            if self.pause_once and seen == 1:
                await asyncio.sleep(self.pause_once)
        text = b"".join(parts).decode()
        return web.json_response({"words": len(text.split()), "bytes": total})


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


@asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[str]:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/", handler)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def topology(
    gen_url: str,
    post_url: str,
    *,
    budget_ms: int | None = None,
    stream_out: bool = True,
    gen_timeout: float = 30.0,
    post_timeout: float = 30.0,
) -> Topology:
    return Topology(
        pipeline="chat",
        namespace="ns",
        output="post",
        stages={
            "gen": StageRoute("gen", gen_url, stream=True, timeout_seconds=gen_timeout),
            "post": StageRoute(
                "post",
                post_url,
                depends_on=("gen",),
                stream=stream_out,
                timeout_seconds=post_timeout,
                stream_input=True,
            ),
        },
        latency_budget_ms=budget_ms,
    )


@asynccontextmanager
async def router_for(plan: Topology) -> AsyncIterator[str]:
    router = Router(
        RouterConfig(
            listen=HostPort("127.0.0.1", 0), topology=plan, admin_listen=HostPort("127.0.0.1", 0)
        )
    )
    await router.start()
    try:
        yield f"http://127.0.0.1:{router.port}/"
    finally:
        await router.stop()


@asynccontextmanager
async def pipeline(
    gen: Generator, reader: Reader, *, gateway: bool = False, budget_ms: int | None = None
) -> AsyncIterator[str]:
    async with serving(gen.handle) as gen_url, serving(reader.handle) as post_url:
        if not gateway:
            plan = topology(gen_url, post_url, budget_ms=budget_ms, stream_out=reader.stream_out)
            async with router_for(plan) as url:
                yield url
            return
        config = GatewayConfig(
            listen=HostPort("127.0.0.1", 0),
            admin_listen=HostPort("127.0.0.1", 0),
            upstream=post_url,
            pipeline="chat",
            stage="post",
            input_mode="stream",
            health_interval_seconds=0.1,
        )
        front = Gateway(config)
        await front.start()
        try:
            deadline = time.monotonic() + 10
            while not front.ready:
                assert time.monotonic() < deadline, front.not_ready_reason
                await asyncio.sleep(0.01)
            through = f"http://127.0.0.1:{front.port}"
            plan = topology(gen_url, through, budget_ms=budget_ms, stream_out=reader.stream_out)
            async with router_for(plan) as url:
                yield url
        finally:
            await front.stop()


async def post_first_chunk(url: str) -> tuple[int, float, bytes]:
    """Status, when the first body chunk arrived, the whole body."""
    async with aiohttp.ClientSession() as session, session.post(url, json={"q": "hi"}) as response:
        first_at = 0.0
        parts = []
        async for chunk in response.content.iter_any():
            if not first_at:
                first_at = time.monotonic()
            parts.append(chunk)
        return response.status, first_at, b"".join(parts)


@pytest.mark.parametrize("gateway", [False, True], ids=["direct", "through its gateway"])
async def test_the_dependant_answers_before_its_source_finished(gateway: bool) -> None:
    gen, reader = Generator(tokens=10, pause=0.05), Reader(stream_out=True)
    async with pipeline(gen, reader, gateway=gateway) as url:
        status, first_at, body = await post_first_chunk(url)
    assert status == 200
    assert body == "".join(f"token{i} " for i in range(10)).upper().encode()
    # The client had the dependant's first output before the source wrote its last token.
    assert first_at < gen.written[-1]
    assert gen.envelopes == [{"q": "hi"}]  # the source gets the pipeline input as usual
    assert reader.content_types == ["text/plain; charset=utf-8"]  # the source's, passed on


async def test_a_buffered_dependant_gets_the_whole_stream() -> None:
    gen, reader = Generator(tokens=20, pause=0.0), Reader(stream_out=False)
    async with (
        pipeline(gen, reader) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json={}, headers={"X-Penstock-Profile": "1"}) as answer,
    ):
        document = await answer.json()
    assert document["output"] == {"words": 20, "bytes": sum(len(f"token{i} ") for i in range(20))}
    stages = {item["name"]: item for item in document["profile"]["stages"]}
    # The dependant starts once the source's answer begins, not after it ends.
    assert stages["post"]["start_ms"] < stages["gen"]["end_ms"] <= stages["post"]["end_ms"]


async def test_a_slow_reader_slows_the_source() -> None:
    # 64 MiB as fast as the source can write; the reader stops for 1.5 s after its first chunk.
    # Without backpressure the source would be done by then; with it, it waits, having written
    # what the socket buffers and the router's bounded queue hold.
    gen = Generator(tokens=1024, pause=0.0, size=64 << 10)
    reader = Reader(stream_out=False, pause_once=1.5)
    async with (
        pipeline(gen, reader) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json={}) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["bytes"] == 64 << 20
    first_read = reader.read_bytes[0][0]
    by_resume = max(count for at, count in gen.written_bytes if at <= first_read + 1.4)
    assert by_resume < 32 << 20, f"the source wrote {by_resume >> 20} MiB while nobody read"


async def test_a_failing_reader_stops_the_source() -> None:
    gen = Generator(tokens=200, pause=0.02)
    reader = Reader(stream_out=False, fail_after=3)
    async with (
        pipeline(gen, reader) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json={}) as answer,
    ):
        assert answer.status == 502
        error = await answer.json()
        await asyncio.sleep(0.3)
    assert error["stage"] == "post" and "HTTP 500" in error["error"]
    assert gen.client_left
    assert len(gen.written) < 50  # it stopped soon after, not after its 200 tokens


async def test_a_broken_source_is_named_not_its_reader() -> None:
    gen = Generator(tokens=10, pause=0.02, break_after=3)
    reader = Reader(stream_out=False)
    async with (
        pipeline(gen, reader) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json={}) as answer,
    ):
        assert answer.status == 502
        error = await answer.json()
    assert error["stage"] == "gen", error
    assert "stream of stage 'gen' broke" in error["error"]


async def test_the_latency_budget_covers_the_stream() -> None:
    gen = Generator(tokens=100, pause=0.05)  # 5 s of generation
    reader = Reader(stream_out=False)
    async with pipeline(gen, reader, budget_ms=300) as url, aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(url, json={}) as answer:
            assert answer.status == 504
            error = await answer.json()
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.3)
    assert "latency budget of 300 ms" in error["error"]
    assert gen.client_left  # the source was stopped too


def test_topology_documents_round_trip_and_are_checked() -> None:
    plan = topology("http://gen", "http://post")
    assert parse_topology(plan.to_document()).stages["post"].stream_input
    document = plan.to_document()
    document["stages"][0]["stream"] = False
    with pytest.raises(TopologyError, match="'post' has input: stream"):
        parse_topology(document)
    document = json.loads(json.dumps(plan.to_document()))
    document["stages"][1]["input"] = "pipe"
    with pytest.raises(TopologyError, match="input must be envelope or stream"):
        parse_topology(document)
    third = replace(plan.stages["post"], name="other", stream_input=False)
    crowded = replace(plan, stages={**plan.stages, "other": third})
    with pytest.raises(TopologyError, match="'post' has input: stream"):
        parse_topology(crowded.to_document())


async def test_a_source_timing_out_under_a_slow_reader_still_gets_an_answer() -> None:
    # The source needs 5 s but may take 1 s; the reader is slow. The client gets a clear 504
    # (no request left unanswered) and the source is stopped.
    gen = Generator(tokens=100, pause=0.05)
    reader = Reader(stream_out=False, pause=0.2)
    async with serving(gen.handle) as gen_url, serving(reader.handle) as post_url:
        plan = topology(gen_url, post_url, stream_out=False, gen_timeout=1, post_timeout=3)
        async with router_for(plan) as url, aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(url, json={}) as answer:
                assert answer.status == 504
                error = await answer.json()
            assert time.monotonic() - started < 4
            await asyncio.sleep(0.3)
    assert error["stage"] in ("gen", "post") and "timeoutSeconds" in error["error"]
    assert gen.client_left


async def test_a_reader_that_cannot_be_reached_stops_the_source() -> None:
    gen = Generator(tokens=100, pause=0.01)
    async with serving(gen.handle) as gen_url:
        plan = topology(gen_url, "http://127.0.0.1:1", stream_out=False, post_timeout=1)
        async with (
            router_for(plan) as url,
            aiohttp.ClientSession() as session,
            session.post(url, json={}) as answer,
        ):
            assert answer.status == 502
            assert (await answer.json())["stage"] == "post"
        await asyncio.sleep(0.3)
    assert gen.client_left and len(gen.written) < 100


async def test_a_broken_source_of_a_streamed_output_is_named() -> None:
    gen = Generator(tokens=10, pause=0.02, break_after=0)
    reader = Reader(stream_out=True)
    async with (
        pipeline(gen, reader) as url,
        aiohttp.ClientSession() as session,
        session.post(url, json={}) as answer,
    ):
        assert answer.status == 502
        error = await answer.json()
    assert error["stage"] == "gen", error
