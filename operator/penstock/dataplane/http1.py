"""The gateway's serving port: a small HTTP/1.1 server on llhttp (httptools) and the event loop's
transports, without aiohttp's web layer (request objects, router, middleware chain, writer).

A hop's cost is per-request Python work, and aiohttp's server machinery was most of the
gateway's: the same proxy on this server costs about a third of the CPU per request (see
docs/benchmarks.md, "The hop"). It implements what a reverse proxy in front of one stage needs
and nothing else: Content-Length and chunked bodies both ways (a request body is read whole
with a bound, or streamed with backpressure), keep-alive and pipelined requests answered in
order, ``Expect: 100-continue``, HEAD, and JSON error answers naming the server. Connections are
bounded and timed by the same :class:`~penstock.dataplane.connections.Listener` as the aiohttp
listeners (states fresh / head / busy / idle, each with its deadline; one sweep per listener).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

from penstock.dataplane.connections import BUSY, FRESH, HEAD, IDLE, Deadlines, Listener
from penstock.dataplane.limits import BodyTimeout, Identity, ServerLimits

log = logging.getLogger("penstock.dataplane")

MAX_FIELD_BYTES = 8190  # one header line or the request target, as aiohttp allows
MAX_HEAD_BYTES = 65536  # all of a request head
MAX_HEADERS = 128
_BODY_HIGH_WATER = 256 * 1024  # stop reading the socket while this much body waits unread
_SHUTDOWN_SECONDS = 5.0
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class BodyTooLarge(ValueError):
    """A request body beyond the bound given to :meth:`Body.read`."""


class Body:
    """A request body as it arrives: read whole (bounded) or streamed chunk by chunk."""

    __slots__ = ("_chunks", "_connection", "_error", "_size", "_waiter", "done")

    def __init__(self, connection: Connection | None) -> None:
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.done = connection is None

    def is_eof(self) -> bool:
        return self.done and not self._chunks

    # -- from the connection
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _BODY_HIGH_WATER and self._connection is not None:
            self._connection.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self.done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the handler
    async def _more(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.done:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= _BODY_HIGH_WATER // 2 and self._connection is not None:
            self._connection.resume_reading()
        return chunk

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`BodyTooLarge` once more than ``limit`` bytes arrived,
        :class:`~penstock.dataplane.limits.BodyTimeout` or ``ConnectionError`` when it cannot."""
        if self.done and self._error is None and len(self._chunks) <= 1:
            data = self._chunks.popleft() if self._chunks else b""  # the usual case: one piece
            self._size = 0
            if len(data) > limit:
                raise BodyTooLarge(f"more than {limit} bytes")
            return data
        parts: list[bytes] = []
        size = 0
        while (chunk := await self._more()) is not None:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"more than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (a slow reader slows the client)."""
        while (chunk := await self._more()) is not None:
            yield chunk


class Request:
    """One request: its head and its :class:`Body`."""

    __slots__ = (
        "_connection",
        "body",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "path",
        "remote",
        "target",
        "version",
    )

    def __init__(
        self,
        connection: Connection | None,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        *,
        version: str = "1.1",
        keep_alive: bool = True,
        remote: str | None = None,
        body: Body | None = None,
    ) -> None:
        self._connection = connection
        self.method = method
        self.target = target  # path and query as sent
        self.path = _path_of(target)  # percent-decoded, without the query
        self.headers = headers  # the handler's to read
        self.version = version
        self.keep_alive = keep_alive
        self.remote = remote
        self.body = body if body is not None else Body(None)
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    @property
    def body_exists(self) -> bool:
        return not self.body.is_eof()

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and connection.transport is not None

    @property
    def answer_started(self) -> bool:
        """Has the answer begun (so an error can only cut it, not replace it)?"""
        return self._connection is not None and self._connection.started

    def cut(self) -> None:
        """Close the connection now: the client sees a truncated answer, never a complete one."""
        if self._connection is not None:
            self._connection.cut()


def _path_of(target: str) -> str:
    if target == "/":
        return target
    if not target.startswith("/"):  # absolute form, or "*"
        try:
            url = httptools.parse_url(target.encode("latin-1", "replace"))
        except httptools.HttpParserInvalidURLError:
            return target
        target = (url.path or b"/").decode("latin-1")
    path = target.partition("?")[0]
    return unquote(path) if "%" in path else path


class Response:
    """A whole answer: status, headers and body, written in one call."""

    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(
        self,
        *,
        status: int = 200,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.keep_alive = True

    def force_close(self) -> None:
        self.keep_alive = False


def json_response(
    value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    response = Response(status=status, body=json.dumps(value).encode(), headers=headers)
    response.headers["Content-Type"] = "application/json"
    return response


class StreamResponse:
    """An answer whose body is written as it comes: :meth:`prepare`, :meth:`write`s,
    :meth:`write_eof`. Without a ``content_length`` it is sent chunked (to an HTTP/1.0 client:
    until the connection closes)."""

    __slots__ = ("_chunked", "_connection", "_no_body", "content_length", "headers", "status")

    def __init__(self, *, status: int = 200) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self._connection: Connection | None = None
        self._chunked = False
        self._no_body = False

    @property
    def prepared(self) -> bool:
        return self._connection is not None

    async def prepare(self, request: Request) -> None:
        connection = request._connection
        if connection is None:
            raise ConnectionResetError("the request has no connection")
        self._connection = connection
        self._no_body = request.method == "HEAD" or self.status in _NO_BODY_STATUSES
        framing = []
        if self.content_length is not None:
            framing.append(("Content-Length", str(self.content_length)))
        elif self._no_body:
            pass  # neither a length nor chunks: nothing follows the head
        elif request.version == "1.1":
            self._chunked = True
            framing.append(("Transfer-Encoding", "chunked"))
        else:
            connection.closing = True  # the end of the body is the end of the connection
        connection.started = True
        connection.write(_head(self.status, self.headers, framing, connection))
        await connection.drain()

    async def write(self, chunk: bytes) -> None:
        connection = self._connection
        assert connection is not None, "prepare() first"
        if not chunk or self._no_body:
            return
        if connection.transport is None or connection.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        await connection.drain()

    async def write_eof(self) -> None:
        connection = self._connection
        assert connection is not None, "prepare() first"
        if self._chunked:
            connection.write(b"0\r\n\r\n")
            self._chunked = False
        await connection.drain()


Answer = Response | StreamResponse
Handler = Callable[[Request], Awaitable[Answer]]

_date = ("", 0)


def _date_header() -> str:
    global _date
    now = int(time.time())
    if _date[1] != now:
        _date = (formatdate(now, usegmt=True), now)
    return _date[0]


def _head(
    status: int,
    headers: CIMultiDict[str],
    framing: list[tuple[str, str]],
    connection: Connection,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if "Date" not in headers:  # a proxied answer keeps the stage's
        lines.append(f"Date: {_date_header()}")
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() not in _FRAMING]
    lines += [f"{name}: {value}" for name, value in framing]
    if connection.closing:
        lines.append("Connection: close")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("a response header holds a line break")
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")


class Connection(Deadlines, asyncio.Protocol):
    """One client connection: parses requests, runs the handler on each in turn, writes the
    answers in order, and tells its listener what state it is in."""

    def __init__(self, site: Site) -> None:
        self._site = site
        self._listener = site.listener
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._state = FRESH
        self._deadline = time.monotonic() + self._listener.limits.header_timeout
        self._body_deadline = 0.0
        self._body_timed_out = False
        self._bad_http: str | None = None  # why the request could not be parsed
        self._stalled = 0.0  # since when the client has not read our answer (0: it reads)
        self._writable: asyncio.Event | None = None
        self._reading = True
        self._remote: str | None = None
        # the request being parsed
        self._url = b""
        self._head_bytes = 0
        self._names: list[str] = []
        self._values: list[str] = []
        self._in_head = False
        self._parsing: Request | None = None
        # requests waiting for their turn, and the one being answered
        self._waiting: deque[Request] = deque()
        self.answering: asyncio.Task[None] | None = None  # the answer in progress
        self.started = False  # the current answer has begun (only a cut can end it now)
        self.closing = False  # no further request on this connection
        self._eof = False  # the client sent all it will send

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self._remote = str(peer[0])
        self._listener.made(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.lost(self)
        self.transport = None
        error = ConnectionResetError("the client closed the connection")
        if self._parsing is not None:
            self._parsing.body.fail(error)
        for request in self._waiting:
            request.body.fail(error)
        self._waiting.clear()
        if self._writable is not None:
            self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._head_begins()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "bad HTTP request: protocol upgrades are not supported")
        except (httptools.HttpParserError, _HeadTooLarge) as error:
            # a bound hit in a callback arrives wrapped by httptools: say which bound
            cause = error if isinstance(error, _HeadTooLarge) else error.__context__
            if not isinstance(cause, _HeadTooLarge):
                cause = error
            detail = str(cause).split("\n")[0].strip() or "malformed"
            self._refuse(400, f"bad HTTP request: {detail[:120]}")

    def eof_received(self) -> bool | None:
        if self._parsing is not None:
            self._parsing.body.fail(ConnectionResetError("the client closed the connection"))
        if self.answering is None:
            return False  # nothing to answer: close
        self._eof = True  # answer what was received, then close
        return True

    def pause_writing(self) -> None:
        self._stalled = time.monotonic()
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        self._stalled = 0.0
        if self._writable is not None:
            self._writable.set()

    # -- llhttp's callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._names = []
        self._values = []
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD_BYTES:
            raise _HeadTooLarge(f"the request target is longer than {MAX_FIELD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins a header split across reads: each call is one whole header.
        size = len(name) + len(value)
        self._head_bytes += size
        if size > MAX_FIELD_BYTES or self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge(f"a header is longer than {MAX_FIELD_BYTES} bytes")
        if len(self._names) >= MAX_HEADERS:
            raise _HeadTooLarge(f"more than {MAX_HEADERS} headers")
        self._names.append(name.decode("latin-1"))
        self._values.append(value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        headers: CIMultiDict[str] = CIMultiDict(zip(self._names, self._values, strict=True))
        version = parser.get_http_version()
        keep_alive = bool(parser.should_keep_alive())
        request = Request(
            self,
            parser.get_method().decode("latin-1"),
            self._url.decode("utf-8", "surrogateescape"),
            headers,
            version=version,
            keep_alive=keep_alive,
            remote=self._remote,
            body=Body(self),
        )
        self._parsing = request
        self._state = BUSY
        self._listener.unlist(self)
        self._body_deadline = time.monotonic() + self._listener.limits.body_timeout
        expect = headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and version == "1.1":
            length = request.content_length
            if length is None or length <= self._site.max_body_bytes:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.answering is None:
            self._begin(request)
        else:
            self._waiting.append(request)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        self._parsing = None
        if request is not None:
            request.body.finish()
        self._body_deadline = 0.0
        if self._waiting:
            self.pause_reading()  # one more request waits: read on once it is answered

    # -- answering
    def _begin(self, request: Request) -> None:
        self.started = False
        self._body_timed_out = False
        loop = asyncio.get_running_loop()
        self.answering = loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        site = self._site
        site.busy.add(self)
        try:
            try:
                response = await site.handler(request)
            except Exception:  # asyncio.CancelledError is no Exception: it passes
                log.exception("%s: error handling a request", site.identity.describe)
                if self.started:
                    self.cut()  # an answer had begun: it can only be cut, not replaced
                    return
                response = _json(500, site.identity, "internal error (logged)")
            if self._body_timed_out and not self.started:
                seconds = self._listener.limits.body_timeout
                message = f"request body not received within {seconds:g} s"
                response = _json(408, site.identity, message)
            elif self._bad_http is not None and not self.started:
                response = _json(400, site.identity, self._bad_http)  # the body was malformed
            if isinstance(response, StreamResponse):
                if not response.prepared:  # an answer nobody began: begin and end it here
                    await response.prepare(request)
                await response.write_eof()
            else:
                self._send(request, response)
        except ConnectionError:
            pass  # the client went away: nothing to answer to
        finally:
            site.busy.discard(self)
            self.answering = None
            self._next(request)

    def _send(self, request: Request, response: Response) -> None:
        if not (response.keep_alive and request.keep_alive and request.body.done):
            self.closing = True  # said in the answer: an unread body cannot be skipped
        body = response.body
        no_body = request.method == "HEAD" or response.status in _NO_BODY_STATUSES
        framing = (
            [] if response.status in _NO_BODY_STATUSES else [("Content-Length", str(len(body)))]
        )
        head = _head(response.status, response.headers, framing, self)
        self.write(head if no_body else head + body)

    def _next(self, answered: Request) -> None:
        transport = self.transport
        if transport is None:
            return
        if not (answered.keep_alive and answered.body.done):
            self.closing = True  # an unread body cannot be skipped safely: close
        if self.closing or self._body_timed_out:
            self._waiting.clear()
            transport.close()
            return
        if self._waiting:
            self._begin(self._waiting.popleft())
            if not self._waiting:
                self.resume_reading()
            return
        if self._eof:
            transport.close()
            return
        if self._in_head:  # the next head is arriving: it has the header timeout
            self._state = HEAD
            self._deadline = time.monotonic() + self._listener.limits.header_timeout
            self.resume_reading()
            return
        self._state = IDLE
        self._deadline = time.monotonic() + self._listener.limits.idle_timeout
        if self in self._listener.open:  # not evicted or timed out meanwhile
            self._listener.idle[self] = None
        self.resume_reading()

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed: a JSON error (unless an answer has begun), close."""
        self.closing = True
        self._bad_http = message
        if self._parsing is not None:
            self._parsing.body.fail(ConnectionResetError(message))
        transport = self.transport
        if transport is None:
            return
        if self.answering is None:
            log.debug("%s: bad request: %s", self._site.identity.describe, message)
            transport.write(self._site.identity.raw(status, message))
            transport.close()
        # else: the answer in progress finishes, then the connection closes

    # -- writing, flow control
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        writable = self._writable
        if writable is not None and not writable.is_set():
            await writable.wait()
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")

    def pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()

    def cut(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- the listener's sweep (the rules: connections.Deadlines.check)
    def _transport(self) -> asyncio.Transport | None:
        return self.transport

    def _check_body(self, now: float, limits: ServerLimits) -> None:
        request = self._parsing
        if request is not None and self._body_deadline and now >= self._body_deadline:
            self._body_deadline = 0.0
            self._body_timed_out = True
            self.closing = True  # no further request on this connection
            seconds = f"{limits.body_timeout:g}"
            request.body.fail(BodyTimeout(f"request body not received within {seconds} s"))
            self._parsing = None
            self.pause_reading()


class _HeadTooLarge(Exception):
    """A request head beyond the bounds (raised from a parser callback, ends the parse)."""


def _json(status: int, identity: Identity, message: str) -> Response:
    response = Response(status=status, body=identity.body(message), content_type="application/json")
    response.force_close()
    return response


class Site:
    """One listening socket served by a handler, its connections bounded by a Listener."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        identity: Identity,
        max_body_bytes: int,
    ) -> None:
        self.handler = handler
        self.identity = identity
        self.max_body_bytes = max_body_bytes
        self.listener = Listener(limits, identity)
        self.busy: set[Connection] = set()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        loop = asyncio.get_running_loop()
        factory = self.listener.factory(lambda: Connection(self))
        self._server = await loop.create_server(
            factory, host, port, reuse_address=True, backlog=backlog
        )
        self.listener.start()
        sockets: Any = self._server.sockets
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting, close idle connections, give answers in progress a few seconds."""
        if self._server is None:
            return
        self._server.close()
        await self.listener.stop()
        for connection in list(self.listener.open):
            if connection not in self.busy and connection.transport is not None:
                connection.transport.close()
        answering = [c.answering for c in self.busy if c.answering is not None]
        if answering:
            await asyncio.wait(answering, timeout=_SHUTDOWN_SECONDS)
        for connection in list(self.listener.open):
            if connection.transport is not None:
                connection.transport.abort()
        self.listener.open.clear()
        self._server = None
