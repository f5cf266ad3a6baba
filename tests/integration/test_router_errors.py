"""Every answer of the router that is not a pipeline result is JSON naming the router: aiohttp's
own 404/405/413/400, an unexpected exception anywhere (a logged 500, never aiohttp's text/plain
"Server got itself in trouble"), on the pipeline port and the admin port; header values that are
not latin-1 (or not even UTF-8) in a client's request or a stage's answer are handled cleanly.

Requests are raw bytes on a socket, so nothing in a client library tidies them up first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from penstock.contract.topology import StageRoute, Topology
from penstock.contract.wire import PROFILE_HEADER
from penstock.dataplane.gateway.config import HostPort
from penstock.dataplane.router import Router, RouterConfig
from penstock.dataplane.router import server as router_module
from tests.integration.test_router_stream import outcomes

pytestmark = pytest.mark.integration


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


async def exchange(port: int, request: bytes, *, read_timeout: float = 10) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(read_timeout):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
            if size == 0:
                break
        body = decoded
    return Answer(int(lines[0].split()[1]), headers, body)


def request(method: str, path: str, body: bytes = b"", *extra: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: router", b"Connection: close"]
    head += [*extra, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@asynccontextmanager
async def echo_stage(headers: bytes = b"", *, stream: bool = False) -> AsyncIterator[str]:
    """A raw stage answering ``{"echo": true}`` with extra raw header lines."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                body = b'{"echo": true}'
                content_type = b"" if stream else b"Content-Type: application/json\r\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\n%s%sContent-Length: %d\r\n\r\n%s"
                    % (content_type, headers, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@asynccontextmanager
async def running(url: str, *, stream: bool = False) -> AsyncIterator[Router]:
    topology = Topology(
        pipeline="rag",
        namespace="ns",
        output="s",
        stages={"s": StageRoute("s", url, stream=stream)},
    )
    router = Router(RouterConfig(HostPort("127.0.0.1", 0), topology, HostPort("127.0.0.1", 0)))
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


CHUNKED = b"Transfer-Encoding: chunked"

# (port, raw request, status): every way a request can fail before reaching a stage.
REFUSED = {
    "GET /": ("public", request("GET", "/"), 405),
    "PUT /": ("public", request("PUT", "/", b"{}"), 405),
    "DELETE /x": ("public", request("DELETE", "/x"), 404),
    "POST /x": ("public", request("POST", "/x", b"{}"), 404),
    "POST /?q (query kept on the route)": ("public", request("POST", "/nope?q=1", b"{}"), 404),
    "Content-Length over the limit": ("public", request("POST", "/", b"x" * 2000), 413),
    "chunked body over the limit": (
        "public",
        b"POST / HTTP/1.1\r\nHost: r\r\nConnection: close\r\n%s\r\n\r\n%s0\r\n\r\n"
        % (CHUNKED, b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n"),
        413,
    ),
    "body not JSON": ("public", request("POST", "/", b"{nope"), 400),
    "admin GET /nope": ("admin", request("GET", "/nope"), 404),
    "admin POST /metrics": ("admin", request("POST", "/metrics", b"{}"), 405),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_router_refusals_are_json_naming_the_router(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "MAX_BODY_BYTES", 1024)
    which, raw, status = REFUSED[case]
    async with echo_stage() as url, running(url) as router:
        port = router.port if which == "public" else router.admin_port
        answer = await exchange(port, raw)
        # Nothing was broken for the next caller.
        ok = await exchange(router.port, request("POST", "/", b"{}"))
    assert answer.status == status, answer
    body = answer.json()
    assert body["pipeline"] == "rag"
    if status in (404, 405):
        assert "the router of pipeline 'rag'" in body["error"]
    if status == 405:
        assert answer.headers["allow"]
    assert (ok.status, ok.json()) == (200, {"echo": True})


async def test_unexpected_exceptions_are_a_logged_json_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    async with echo_stage() as url, running(url) as router:
        monkeypatch.setattr(router, "_execute", broken)
        pipeline = await exchange(router.port, request("POST", "/", b"{}"))
        monkeypatch.setattr(router.metrics.duration, "observe", lambda _: 1 / 0)
        in_metrics = await exchange(router.port, request("POST", "/", b"{}"))
        monkeypatch.undo()
        ok = await exchange(router.port, request("POST", "/", b"{}"))
        counted = outcomes(router)
    for answer in (pipeline, in_metrics):
        assert answer.status == 500, answer
        assert b"Server got itself in trouble" not in answer.body
        assert answer.json()["pipeline"] == "rag"
        assert "internal error" in answer.json()["error"]
    assert ok.status == 200
    assert counted["internal_error"] >= 1
    assert "a bug" in caplog.text and "ZeroDivisionError" in caplog.text


async def test_admin_exception_is_a_json_500() -> None:
    async def broken(request: Any) -> Any:
        raise RuntimeError("a bug in readiness")

    topology = Topology("rag", "ns", "s", {"s": StageRoute("s", "http://127.0.0.1:1")})
    router = Router(RouterConfig(HostPort("127.0.0.1", 0), topology, HostPort("127.0.0.1", 0)))
    router._ready = broken  # type: ignore[method-assign]  # bound to its route at start
    await router.start()
    try:
        answer = await exchange(router.admin_port, request("GET", "/ready"))
        live = await exchange(router.admin_port, request("GET", "/live"))
    finally:
        await router.stop()
    assert answer.status == 500
    assert answer.json()["pipeline"] == "rag" and "admin" in answer.json()["error"]
    assert live.status == 200


ODD_VALUES = [
    "é".encode(),  # UTF-8, not latin-1 once decoded
    "日本".encode(),
    b"\xff\xfe",  # not UTF-8 at all
    b"text/event-stream; charset=\xe9",  # latin-1
]


@pytest.mark.parametrize("value", ODD_VALUES)
async def test_odd_header_bytes_from_a_client_are_handled(value: bytes) -> None:
    async with echo_stage() as url, running(url) as router:
        for name in (b"X-Anything", PROFILE_HEADER.encode(), b"traceparent", b"tracestate"):
            answer = await exchange(router.port, request("POST", "/", b"{}", name + b": " + value))
            assert (answer.status, answer.json()) == (200, {"echo": True}), name


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize("stream", [False, True])
async def test_odd_header_bytes_from_a_stage_are_dropped_not_mangled(
    value: bytes, stream: bool
) -> None:
    stage_headers = b"X-Penstock-Cache: " + value + b"\r\n"
    if stream:
        stage_headers += b"Content-Type: " + value + b"\r\n"
    async with echo_stage(stage_headers, stream=stream) as url, running(url, stream=stream) as r:
        answer = await exchange(r.port, request("POST", "/", b"{}"))
        profiled = await exchange(r.port, request("POST", "/", b"{}", b"X-Penstock-Profile: 1"))
    assert answer.status == 200 and answer.body == b'{"echo": true}'
    assert "x-penstock-cache" not in answer.headers  # not passed on re-encoded
    if stream:
        assert answer.headers.get("content-type", "").isascii()
        assert value.decode("latin-1") not in answer.headers.get("content-type", "")
    else:
        assert profiled.json()["profile"]["stages"][0]["cache"] is None
