"""A streamed answer never looks complete unless it is: every way a stream can break or be cut
after its first chunk aborts the client connection (no final chunk, or short of its
Content-Length) and counts ``outcome="stream_aborted"``; before the first chunk it is still a
JSON 502/504 naming the stage.

The output stage is a raw asyncio server writing exact bytes (aiohttp's server would not
misbehave); the client reads the router's answer off a raw socket until EOF, so the test sees
the bytes on the wire, and also through aiohttp's client as a caller would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from penstock.contract.topology import StageRoute, Topology
from penstock.dataplane.gateway.config import HostPort
from penstock.dataplane.router import Router, RouterConfig

pytestmark = pytest.mark.integration

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@asynccontextmanager
async def stage(script: Script) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A raw stage: reads one request head and body, then runs ``script`` on the socket."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            await script(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", writers
    finally:
        server.close()
        for writer in writers:
            writer.close()


@asynccontextmanager
async def router_for(
    url: str, budget_ms: int | None = None, stage_seconds: float = 30
) -> AsyncIterator[Router]:
    topology = Topology(
        pipeline="chat",
        namespace="ns",
        output="gen",
        stages={"gen": StageRoute("gen", url, stream=True, timeout_seconds=stage_seconds)},
        latency_budget_ms=budget_ms,
    )
    router = Router(
        RouterConfig(
            listen=HostPort("127.0.0.1", 0),
            topology=topology,
            admin_listen=HostPort("127.0.0.1", 0),
        )
    )
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


def outcomes(router: Router) -> dict[str, float]:
    """The router's request counts by outcome."""
    return {
        sample.labels["outcome"]: sample.value
        for family in router.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "penstock_pipeline_requests_total"
    }


async def raw_post(port: int) -> bytes:
    """POST {} over a raw socket and read until the router closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    try:
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def head_then(writer: asyncio.StreamWriter, *parts: bytes | float) -> None:
    """Write each bytes part, sleep for each float part."""
    for part in parts:
        if isinstance(part, float):
            await asyncio.sleep(part)
        else:
            writer.write(part)
            await writer.drain()


FIRST = b"data: one\n\n"

# Every way a stream can fail after its first chunk, as (script, router budget ms, stage timeout).
MID_STREAM: dict[str, tuple[Script, int | None, float]] = {
    "stage-closes-chunked": (lambda w: head_then(w, HEAD_CHUNKED, chunk(FIRST), 0.05), None, 30),
    "stage-closes-short-of-content-length": (
        lambda w: head_then(
            w,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + FIRST,
            0.05,
        ),
        None,
        30,
    ),
    "invalid-chunk-framing": (
        lambda w: head_then(w, HEAD_CHUNKED, chunk(FIRST), 0.05, b"zz\r\nnot hex\r\n", 1.0),
        None,
        30,
    ),
    "latency-budget-runs-out": (lambda w: head_then(w, HEAD_CHUNKED, chunk(FIRST), 5.0), 400, 30),
    "stage-timeout-seconds": (lambda w: head_then(w, HEAD_CHUNKED, chunk(FIRST), 5.0), None, 0.4),
}


@pytest.mark.parametrize("case", list(MID_STREAM))
async def test_a_stream_failing_mid_way_is_aborted_not_completed(case: str) -> None:
    script, budget, timeout = MID_STREAM[case]
    async with stage(script) as (url, _), router_for(url, budget, timeout) as router:
        wire = await raw_post(router.port)
        # The same through aiohttp's client: an error, not a complete answer.
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{router.port}/", json={}) as response,
        ):
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        counted = outcomes(router)
        # The router still serves afterwards.
        again = await raw_post(router.port)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), wire
    assert FIRST in body  # what had arrived was passed on
    if b"content-length: 100" in head.lower():
        assert len(body) < 100
    else:
        assert b"transfer-encoding: chunked" in head.lower()
        assert not body.endswith(b"0\r\n\r\n"), body  # no final chunk: visibly truncated
    assert counted.get("stream_aborted") == 2
    assert counted.get("ok", 0) == 0
    assert again.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("case", "status"),
    [("closes-after-headers", 502), ("stalls-after-headers", 504)],
)
async def test_a_stream_failing_before_its_first_chunk_is_a_json_error(
    case: str, status: int
) -> None:
    pause = 0.05 if case == "closes-after-headers" else 5.0
    async with (
        stage(lambda w: head_then(w, HEAD_CHUNKED, pause)) as (url, _),
        router_for(url, budget_ms=400) as router,
    ):
        wire = await raw_post(router.port)
        counted = outcomes(router)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), wire
    assert b"application/json" in head.lower()
    error = json.loads(body)
    assert error["stage"] == "gen" and error["pipeline"] == "chat"
    assert "before its first chunk" in error["error"]
    assert counted == {"stage_error" if status == 502 else "timeout": 1.0}


async def test_a_complete_stream_ends_cleanly_and_a_client_leaving_is_counted() -> None:
    async def complete(writer: asyncio.StreamWriter) -> None:
        await head_then(writer, HEAD_CHUNKED, chunk(FIRST), chunk(b"data: two\n\n"), b"0\r\n\r\n")

    async with stage(complete) as (url, _), router_for(url) as router:
        wire = await raw_post(router.port)
        assert outcomes(router) == {"ok": 1.0}
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body.endswith(b"0\r\n\r\n")
    assert FIRST in body and b"data: two" in body

    left: list[str] = []

    async def endless(writer: asyncio.StreamWriter) -> None:
        await head_then(writer, HEAD_CHUNKED)
        try:
            for _ in range(200):
                await head_then(writer, chunk(FIRST), 0.02)
        except ConnectionError:
            left.append("router closed the stage connection")
            raise

    async with stage(endless) as (url, _), router_for(url) as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\n{}")
        await reader.readuntil(FIRST)
        writer.close()  # the client leaves mid-stream
        for _ in range(100):
            if outcomes(router).get("client_closed") and left:
                break
            await asyncio.sleep(0.05)
        assert outcomes(router) == {"client_closed": 1.0}
        assert left  # the stage's stream was not read on for nobody, nor pooled
