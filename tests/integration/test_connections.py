"""What a client can hold of the gateway and the router, with real sockets on 127.0.0.1: heads
dribbled byte by byte (slowloris), silent and idle sockets, bodies that never finish, answers
nobody reads, and more connections than the bound. Every case runs against both servers, which
share the listener code (dataplane/connections); small limits keep it quick.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from aiohttp import web

from penstock.contract.topology import StageRoute, Topology
from penstock.dataplane.connections import Listener
from penstock.dataplane.gateway.config import GatewayConfig, HostPort
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.limits import ServerLimits
from penstock.dataplane.router import Router, RouterConfig

pytestmark = pytest.mark.integration

LIMITS = ServerLimits(header_timeout=0.6, body_timeout=0.6, idle_timeout=1.0, max_connections=8)
SLACK = 0.6  # the sweep's tick, scheduling on a busy machine


async def stage_app(request: web.Request) -> web.Response:
    body = await request.json()
    await asyncio.sleep(body.get("sleep", 0))
    if "big" in body:
        return web.json_response({"big": "x" * body["big"]})
    return web.json_response({"echo": body})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@dataclass
class Server:
    kind: str
    port: int
    admin_port: int
    listeners: list[Listener]
    who: str

    def listener(self, admin: bool = False) -> Listener:
        return self.listeners[1 if admin else 0]


@asynccontextmanager
async def serving(kind: str, limits: ServerLimits = LIMITS) -> AsyncIterator[Server]:
    app = web.Application()
    app.router.add_post("/", stage_app)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site.port}"
    any_port = HostPort("127.0.0.1", 0)
    try:
        if kind == "router":
            topology = Topology("rag", "ns", "s", {"s": StageRoute("s", url, timeout_seconds=10)})
            router = Router(RouterConfig(any_port, topology, any_port, limits=limits))
            await router.start()
            try:
                yield Server(kind, router.port, router.admin_port, router.listeners(), "pipeline")
            finally:
                await router.stop()
        else:
            config = GatewayConfig(
                listen=any_port,
                upstream=url,
                admin_listen=any_port,
                stage="embed",
                header_timeout_seconds=limits.header_timeout,
                body_timeout_seconds=limits.body_timeout,
                idle_timeout_seconds=limits.idle_timeout,
                max_connections=limits.max_connections,
            )
            gateway = Gateway(config)
            await gateway.start()
            try:
                for _ in range(500):
                    if gateway.ready:
                        break
                    await asyncio.sleep(0.01)
                assert gateway.ready
                yield Server(kind, gateway.port, gateway.admin_port, gateway.listeners(), "stage")
            finally:
                await gateway.stop()
    finally:
        await runner.cleanup()


@pytest.fixture(params=["router", "gateway"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["asyncio", "uvloop"], scope="module")
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each case on asyncio's loop and on uvloop (what the commands run on)."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


def post(body: Any, *, close: bool = False) -> bytes:
    data = json.dumps(body).encode()
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (connection, len(data), data)
    )


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length off a kept-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def until_closed(reader: asyncio.StreamReader, limit: float = 10) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when (perf_counter)."""
    data = b""
    async with asyncio.timeout(limit):
        with suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
    return data, time.perf_counter()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def dribble(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, gap: float = 0.05
) -> None:
    """Send data a byte at a time until it is all sent or the server closed the connection."""
    for byte in data:
        if reader.at_eof() or writer.is_closing():
            return
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(gap)


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("admin", [False, True])
async def test_a_dribbled_head_is_cut_after_the_header_timeout(kind: str, admin: bool) -> None:
    async with serving(kind) as server:
        reader, writer = await connect(server.admin_port if admin else server.port)
        started = time.perf_counter()

        head = b"GET /ready HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200
        dribbler = asyncio.create_task(dribble(reader, writer, head))
        data, ended = await until_closed(reader)
        dribbler.cancel()
        writer.close()
    assert LIMITS.header_timeout - 0.05 <= ended - started <= LIMITS.header_timeout + SLACK
    status, _, body = data.partition(b"\r\n")[0], None, data.partition(b"\r\n\r\n")[2]
    assert status.startswith(b"HTTP/1.1 408")
    error = json.loads(body)
    assert server.who in error and "request head not received within 0.6 s" in error["error"]


async def test_a_head_dribbled_on_a_kept_alive_connection_is_cut_too(kind: str) -> None:
    async with serving(kind) as server:
        reader, writer = await connect(server.port)
        writer.write(post({"n": 1}))
        assert (await answer(reader))[0] == 200
        await asyncio.sleep(0.5)  # idle, within the idle timeout
        started = time.perf_counter()
        dribbler = asyncio.create_task(dribble(reader, writer, b"POST / HTTP/1.1\r\nX" * 20))
        data, ended = await until_closed(reader)
        dribbler.cancel()
        writer.close()
    assert ended - started <= LIMITS.header_timeout + SLACK
    assert data.startswith(b"HTTP/1.1 408")


async def test_silent_and_idle_sockets_are_closed(kind: str) -> None:
    async with serving(kind) as server:
        silent_reader, silent = await connect(server.port)
        idle_reader, idle = await connect(server.port)
        started = time.perf_counter()
        idle.write(post({"n": 1}))
        assert (await answer(idle_reader))[0] == 200
        answered = time.perf_counter()
        data, silent_closed = await until_closed(silent_reader)
        assert data == b""  # nothing sent: nothing to answer, just closed
        assert silent_closed - started <= LIMITS.header_timeout + SLACK
        # The kept-alive one still works within its idle timeout...
        await asyncio.sleep(LIMITS.idle_timeout / 2 - (time.perf_counter() - answered))
        idle.write(post({"n": 2}))
        assert (await answer(idle_reader))[0] == 200
        answered = time.perf_counter()
        # ... and is closed once it passed.
        data, idle_closed = await until_closed(idle_reader)
        silent.close()
        idle.close()
    assert data == b""
    assert LIMITS.idle_timeout - 0.05 <= idle_closed - answered <= LIMITS.idle_timeout + SLACK


@pytest.mark.parametrize("how", ["stops", "dribbles"])
async def test_a_body_that_does_not_arrive_in_time_is_a_408(kind: str, how: str) -> None:
    async with serving(kind) as server:
        reader, writer = await connect(server.port)
        started = time.perf_counter()
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")

        dribbler = None
        if how == "dribbles":
            dribbler = asyncio.create_task(dribble(reader, writer, b" " * 98))
        data, ended = await until_closed(reader)
        if dribbler is not None:
            dribbler.cancel()
        writer.close()
        # The server goes on serving.
        reader, writer = await connect(server.port)
        writer.write(post({"after": True}))
        status, _, _ = await answer(reader)
        writer.close()
    assert status == 200
    assert LIMITS.body_timeout - 0.05 <= ended - started <= LIMITS.body_timeout + SLACK
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
    error = json.loads(body)
    assert "request body not received within 0.6 s" in error["error"] and server.who in error


async def test_a_client_not_reading_its_answer_is_cut(kind: str) -> None:
    async with serving(kind) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(post({"big": 16 << 20}))  # 16 MiB it will never read
        listener = server.listener()
        started = time.perf_counter()
        for _ in range(200):
            if not listener.open:
                break
            await asyncio.sleep(0.1)
        held = time.perf_counter() - started
        writer.close()
    assert not listener.open
    assert held <= 2 * LIMITS.idle_timeout + 5  # reading the 16 MiB from the stage counts too


# --------------------------------------------------------------------------- the bound


async def test_idle_sockets_beyond_the_bound_do_not_lock_out_a_new_client(kind: str) -> None:
    async with serving(kind) as server:
        kept_reader, kept = await connect(server.port)
        kept.write(post({"n": 0}))
        assert (await answer(kept_reader))[0] == 200
        hoarded = [await connect(server.port) for _ in range(3 * LIMITS.max_connections)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        reader, writer = await connect(server.port)
        writer.write(post({"n": 1}))
        status, _, body = await answer(reader)
        took = time.perf_counter() - started
        # The kept-alive connection that had served a request still works.
        kept.write(post({"n": 2}))
        kept_status, _, _ = await answer(kept_reader)
        listener = server.listener()
        assert len(listener.open) <= LIMITS.max_connections
        for _, hoarder in hoarded:
            hoarder.close()
        writer.close()
        kept.close()
    assert (status, json.loads(body)) == (200, {"echo": {"n": 1}})
    assert took < 0.5
    assert kept_status == 200
    assert listener.evicted >= 2 * LIMITS.max_connections


async def test_when_every_connection_is_busy_a_new_one_gets_503(kind: str) -> None:
    async with serving(kind) as server:
        busy = [await connect(server.port) for _ in range(LIMITS.max_connections)]
        for number, (_, writer) in enumerate(busy):
            writer.write(post({"sleep": 1.0, "n": number}))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        reader, writer = await connect(server.port)
        writer.write(post({"n": "late"}))
        data, _ = await until_closed(reader, limit=3)
        refused_in = time.perf_counter() - started
        results = [await answer(busy_reader) for busy_reader, _ in busy]
        # Once they are done, new connections are served again.
        reader, again = await connect(server.port)
        again.write(post({"n": "again"}))
        again_status = (await answer(reader))[0]
        for _, busy_writer in busy:
            busy_writer.close()
        writer.close()
        again.close()
        admin_reader, admin = await connect(server.admin_port)
        admin.write(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
        admin_status = (await answer(admin_reader))[0]
        admin.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
    error = json.loads(body)
    assert "too many open connections (at most 8)" in error["error"] and server.who in error
    assert refused_in < 0.5
    assert [status for status, _, _ in results] == [200] * LIMITS.max_connections
    assert again_status == 200 and admin_status == 200


async def test_eleven_hundred_idle_sockets_at_the_default_bound() -> None:
    """The prober's case: 1,100 idle sockets against the default limits (1024)."""
    async with serving("router", ServerLimits()) as server:
        hoarded = [await connect(server.port) for _ in range(1100)]
        reader, writer = await connect(server.port)
        writer.write(post({"n": 1}))
        async with asyncio.timeout(5):
            status, _, _ = await answer(reader)
        assert len(server.listener().open) <= 1024
        for _, hoarder in hoarded:
            hoarder.close()
        writer.close()
    assert status == 200


# --------------------------------------------------------------------------- bad HTTP


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    ],
    ids=["not-http", "nul-in-header", "bad-chunk", "two-lengths", "long-header"],
)
async def test_bad_http_is_a_json_400_naming_the_server(kind: str, raw: bytes) -> None:
    async with serving(kind) as server:
        reader, writer = await connect(server.port)
        writer.write(raw)
        data, _ = await until_closed(reader)
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", data
    assert b"application/json" in head
    error = json.loads(body)
    assert server.who in error and error["error"].startswith("the ")
