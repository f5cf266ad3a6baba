"""The gateway's upstream client against real sockets on loopback, including stage servers
that misbehave in ways aiohttp's server never would (closing idle connections, bodies that end
with the connection, invalid HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from penstock.dataplane.upstream import (
    UpstreamClosed,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamRequestError,
)

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    return head, await reader.readexactly(length)


async def test_keep_alive_reuse_and_a_retry_when_the_stage_closed_an_idle_connection() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        _, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()  # closes after one answer without saying so (no Connection: close)

    server, port = await serve(handler)
    pool = UpstreamPool("127.0.0.1", port)
    for number in range(3):
        response = await pool.request("POST", "/", [], b"n%d" % number)
        assert (response.status, await response.read()) == (200, b"n%d" % number)
        response.release()
        await asyncio.sleep(0.05)  # the close reaches the idle connection
    assert connections == 3
    pool.close()
    server.close()


async def test_body_ending_with_the_connection_and_chunked_request_streaming() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        received.append(body)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close:" + body)
        await writer.drain()
        writer.close()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a" * 10, b"", b"b" * 70000):
            yield part

    server, port = await serve(handler)
    pool = UpstreamPool("127.0.0.1", port)
    response = await pool.request("PUT", "/x", [("X-A", "1")], parts())
    assert response.content_length is None
    assert await response.read() == b"until-close:" + b"a" * 10 + b"b" * 70000
    response.release()
    assert received == [b"a" * 10 + b"b" * 70000]
    pool.close()
    server.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", UpstreamClosed),
        (b"NOT HTTP AT ALL\r\n\r\n", UpstreamProtocolError),
        (b"", UpstreamClosed),
    ],
)
async def test_broken_answers_are_clear_errors(answer: bytes, error: type[Exception]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    pool = UpstreamPool("127.0.0.1", port)

    async def exchange() -> bytes:
        response = await pool.request("POST", "/", [], b"{}")
        try:
            return await response.read()
        finally:
            response.release()

    with pytest.raises(error):
        await exchange()
    pool.close()
    server.close()


async def test_header_bytes_pass_unchanged_and_line_breaks_are_refused() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    pool = UpstreamPool("127.0.0.1", port)
    # As aiohttp decodes a client's header bytes: UTF-8, and undecodable bytes as surrogates.
    sent = [("X-Utf8", "日本"), ("X-Raw", b"\xff\xfe".decode("utf-8", "surrogateescape"))]
    response = await pool.request("POST", "/", sent, b"")
    assert response.status == 204
    response.release()
    assert b"\r\nX-Utf8: \xe6\x97\xa5\xe6\x9c\xac\r\n" in heads[0]
    assert b"\r\nX-Raw: \xff\xfe\r\n" in heads[0]
    for bad in ("a\r\nInjected: 1", "a\nb", "a\rb", "a\x00b", "\ud800"):
        with pytest.raises(UpstreamRequestError):
            await pool.request("POST", "/", [("X-Bad", bad)], b"")
    assert len(heads) == 1  # nothing was sent for them
    pool.close()
    server.close()


async def test_a_refused_connection_is_tried_again_until_the_stage_listens_or_time_ends() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    server.close()
    await server.wait_closed()  # the port refuses now, like a Service without a ready pod

    async def listen_later() -> asyncio.Server:
        await asyncio.sleep(0.4)
        return await asyncio.start_server(handler, "127.0.0.1", port)

    later = asyncio.create_task(listen_later())
    patient = UpstreamPool("127.0.0.1", port, connect_retry_seconds=5)
    started = asyncio.get_running_loop().time()
    response = await patient.request("POST", "/", [], b"held")
    assert (response.status, await response.read()) == (200, b"held")
    assert asyncio.get_running_loop().time() - started >= 0.3  # it waited for the listener
    response.release()
    patient.close()
    listener = await later
    listener.close()
    await listener.wait_closed()

    # With the port closed again, the budget ends in the refusal itself, not a hang.
    impatient = UpstreamPool("127.0.0.1", port, connect_retry_seconds=0.3)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConnectionRefusedError):
        await impatient.request("POST", "/", [], b"x")
    assert 0.1 <= asyncio.get_running_loop().time() - started < 2
    with pytest.raises(ConnectionRefusedError):  # no budget: the first refusal is the answer
        await UpstreamPool("127.0.0.1", port).request("POST", "/", [], b"x")
