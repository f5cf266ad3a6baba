"""The gateway's HTTP/1.1 server (dataplane/http1) over real sockets on 127.0.0.1: framing both
ways, keep-alive and pipelining, Expect, HEAD, HTTP/1.0, bounds on the head, a streamed request
body with backpressure, and what a handler's failure looks like. The gateway's own behaviour on
top of it is tested in test_gateway*.py and test_connections.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest

from penstock.dataplane.http1 import (
    BodyTooLarge,
    Request,
    Response,
    Site,
    StreamResponse,
)
from penstock.dataplane.limits import Identity, ServerLimits

pytestmark = pytest.mark.integration

IDENTITY = Identity("the test server", {"who": "test"})
LIMIT = 1 << 20


async def handler(request: Request) -> Response | StreamResponse:
    if request.path == "/stream":
        out = StreamResponse(status=200)
        out.headers["Content-Type"] = "text/plain"
        await out.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await out.write(part)
        await out.write_eof()
        return out
    if request.path == "/fail":
        raise RuntimeError("a bug")
    if request.path == "/upload":
        size = 0
        async for chunk in request.body.iter_any():
            size += len(chunk)
            await asyncio.sleep(0)  # a slow consumer
        return Response(body=json.dumps({"size": size}).encode(), content_type="application/json")
    try:
        body = await request.body.read(LIMIT)
    except BodyTooLarge:
        return Response(status=413, body=b"{}", content_type="application/json")
    answer = {
        "method": request.method,
        "target": request.target,
        "path": request.path,
        "body": body.decode(),
        "x": request.headers.getall("x-test", []),
    }
    return Response(body=json.dumps(answer).encode(), content_type="application/json")


@asynccontextmanager
async def site(limits: ServerLimits | None = None) -> AsyncIterator[Site]:
    server = Site(handler, limits or ServerLimits(), IDENTITY, LIMIT)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def exchange(port: int, raw: bytes, limit: float = 5) -> bytes:
    """Send raw bytes, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = b""
    async with asyncio.timeout(limit):
        with suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
    writer.close()
    return data


def answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length / chunked / close-delimited answers."""
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        status = int(lines[0].split()[1])
        if status == 100:
            continue
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = data[:size], data[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                chunk, data = data[:size], data[size + 2 :]
                if size == 0:
                    break
                body += chunk
        else:
            body, data = data, b""
        found.append((status, headers, body))
    return found


def post(target: str, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s" % (
        target.encode(),
        version,
        extra,
        len(body),
        body,
    )


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with site() as server:
        raw = (
            post("/a", b"1") + post("/b?x=1", b"22") + post("/c", b"333", b"Connection: close\r\n")
        )
        got = answers(await exchange(server.port, raw))
    assert [json.loads(body)["target"] for _, _, body in got] == ["/a", "/b?x=1", "/c"]
    assert [json.loads(body)["body"] for _, _, body in got] == ["1", "22", "333"]
    assert got[-1][1]["connection"] == "close"


async def test_pipelined_requests_then_end_of_input_are_all_answered() -> None:
    async with site() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post("/one", b"1") + post("/two", b"2"))
        writer.write_eof()  # the client sends nothing more, and waits for its answers
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert [json.loads(body)["target"] for _, _, body in answers(data)] == ["/one", "/two"]


async def test_the_path_is_percent_decoded_and_the_target_kept_as_sent() -> None:
    async with site() as server:
        got = answers(
            await exchange(server.port, post("/a%20b?q=%20", b"", b"Connection: close\r\n"))
        )
    answer = json.loads(got[0][2])
    assert (answer["path"], answer["target"]) == ("/a b", "/a%20b?q=%20")


async def test_repeated_headers_and_chunked_request_bodies_arrive_whole() -> None:
    async with site() as server:
        raw = (
            b"POST / HTTP/1.1\r\nHost: t\r\nX-Test: 1\r\nX-Test: 2\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        got = answers(await exchange(server.port, raw))
    answer = json.loads(got[0][2])
    assert answer["body"] == "abcde" and answer["x"] == ["1", "2"]


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with site() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"{}")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_a_stream_is_chunked_to_http11_and_close_delimited_to_http10() -> None:
    async with site() as server:
        raw11 = b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        [(status, headers, body)] = answers(await exchange(server.port, raw11))
        assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"one two three")
        raw10 = b"GET /stream HTTP/1.0\r\nHost: t\r\n\r\n"
        [(status, headers, body)] = answers(await exchange(server.port, raw10))
        assert "transfer-encoding" not in headers and body == b"one two three"
        assert headers["connection"] == "close"


async def test_head_gets_the_headers_without_a_body() -> None:
    async with site() as server:
        data = await exchange(
            server.port, b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length:" in head and rest == b""


async def test_http10_without_keep_alive_is_closed_after_its_answer() -> None:
    async with site() as server:
        data = await exchange(server.port, post("/", b"x", version=b"1.0"))
    [(status, headers, _)] = answers(data)
    assert status == 200 and headers["connection"] == "close"


async def test_a_handler_failure_is_a_json_500_naming_the_server() -> None:
    async with site() as server:
        data = await exchange(server.port, b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
    [(status, headers, body)] = answers(data)
    assert status == 500 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "the test server: internal error (logged)", "who": "test"}


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["long-target", "too-many-headers", "upgrade"],
)
async def test_heads_beyond_the_bounds_are_a_json_400(raw: bytes) -> None:
    async with site() as server:
        data = await exchange(server.port, raw)
    [(status, _, body)] = answers(data)
    error = json.loads(body)["error"]
    assert status == 400 and error.startswith("the test server: bad HTTP request: "), error
    assert "callback" not in error  # the bound is named, not httptools' wrapper


async def test_a_large_streamed_body_passes_with_bounded_buffering() -> None:
    size = 8 << 20
    async with site() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % size
        )
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    [(status, _, body)] = answers(data)
    assert status == 200 and json.loads(body) == {"size": size}


async def test_a_body_over_the_bound_is_refused_and_the_connection_closed() -> None:
    async with site() as server:
        data = await exchange(server.port, post("/", b"x" * (4 * LIMIT)))
    [(status, headers, _)] = answers(data)
    assert status == 413 and headers["connection"] == "close"
