"""A small HTTP/1.1 client for the data plane's hops to a stage (gateway -> stage container,
router -> stage Service).

A hop's added latency is mostly per-request client and server work in Python; this client
writes a request in one call and parses the answer with llhttp (httptools), with a pool of
keep-alive connections per stage address. It implements what those hops need and nothing
else: Content-Length or chunked bodies both ways, streaming responses, and a clean error when
the stage closes the connection. ``https://`` stages are spoken to over TLS (SNI, the
certificate verified against the system CA bundle or a given CA file, hostname checked).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

# Pause reading the stage while this many chunks or bytes wait for the reader: what a slow reader
# leaves unread stays in the kernel's socket buffers, and the stage's writes block.
_CHUNK_QUEUE_HIGH = 64
_QUEUE_HIGH_BYTES = 1 << 20
_FIRST_CONNECT_PAUSE = 0.05  # seconds before a refused connection is tried again; doubles
_LAST_CONNECT_PAUSE = 0.5


class UpstreamClosed(ConnectionError):
    """The stage closed the connection before its answer was complete."""


class UpstreamProtocolError(ConnectionError):
    """The stage's answer is not valid HTTP/1.1."""


@dataclass
class _Pending:
    headers_done: asyncio.Future[None]
    chunks: asyncio.Queue[bytes | BaseException | None] = field(default_factory=asyncio.Queue)
    received_any: bool = False
    complete: bool = False
    queued_bytes: int = 0


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: _Pending | None = None
        self.headers: list[tuple[str, str]] = []
        self.status = 0
        self.closed = False
        self.reused = False
        self._paused = False
        self._writable: asyncio.Event | None = None  # set while the kernel takes more bytes

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            self.close()  # bytes nobody asked for: the connection is not reusable
            return
        pending.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the stage switched protocols"))
        except httptools.HttpParserError as error:
            self._fail(UpstreamProtocolError(f"invalid HTTP from the stage: {error}"))

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    async def drain(self) -> None:
        if self._writable is not None and not self._writable.is_set():
            if self.closed:
                raise UpstreamClosed("the stage closed the connection")
            await self._writable.wait()
        if self.closed:  # woken by connection_lost: nobody reads what would be written
            raise UpstreamClosed("the stage closed the connection")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        pending = self.pending
        if pending is not None and not pending.complete:
            if exc is None and pending.headers_done.done() and self._ends_at_close():
                self.on_message_complete()
            else:
                self._fail(UpstreamClosed("the stage closed the connection"))
        self.pool.forget(self)

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        assert self.pending is not None
        if not self.pending.headers_done.done():
            self.pending.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.pending is not None
        pending = self.pending
        pending.chunks.put_nowait(body)
        pending.queued_bytes += len(body)
        full = (
            pending.chunks.qsize() >= _CHUNK_QUEUE_HIGH or pending.queued_bytes >= _QUEUE_HIGH_BYTES
        )
        if full and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        assert self.pending is not None
        self.pending.complete = True
        self.pending.chunks.put_nowait(None)

    # -- helpers
    def _ends_at_close(self) -> bool:
        """A body with neither Content-Length nor chunked framing ends with the connection."""
        names = {name.lower() for name, _ in self.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def _fail(self, error: BaseException) -> None:
        pending = self.pending
        if pending is not None:
            if not pending.headers_done.done():
                pending.headers_done.set_exception(error)
                pending.headers_done.exception()  # retrieved: the caller may be gone
            pending.chunks.put_nowait(error)
        self.close()

    def resume(self) -> None:
        pending = self.pending
        if pending is not None and pending.queued_bytes >= _QUEUE_HIGH_BYTES:
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def start(self, request: bytes) -> _Pending:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.pending = _Pending(loop.create_future())
        self.headers = []
        self.status = 0
        self.transport.write(request)
        return self.pending


class UpstreamResponse:
    """A stage answer whose headers have arrived; read or stream the body, then release."""

    def __init__(
        self,
        connection: _Connection,
        pending: _Pending,
        keep_alive: bool,
        sending: asyncio.Future[None] | None = None,
    ) -> None:
        self._connection = connection
        self._pending = pending
        self._sending = sending  # a streamed request body still going out
        self._keep_alive = keep_alive
        self._released = False
        self.status = connection.status
        self.headers = connection.headers
        length = self.header("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        queue = self._pending.chunks
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._pending.queued_bytes -= len(item)
            self._connection.resume()
            yield item

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Return the connection for reuse when the answer was read whole, else close it."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.pending = None
        sending = self._sending
        body_sent = sending is None or (
            sending.done() and not sending.cancelled() and sending.exception() is None
        )
        if sending is not None and not sending.done():
            sending.cancel()  # answered before its body was all sent: the connection cannot be reused
        if body_sent and self._pending.complete and self._keep_alive and not connection.closed:
            connection.reused = True
            connection.resume()  # a reader that stopped early may have left reading paused
            self._connection.pool.put_back(connection)
        else:
            connection.close()

    def close(self) -> None:
        self._pending.complete = False
        self.release()


class UpstreamRequestError(ValueError):
    """A request that cannot be written as HTTP/1.1 (a line break or NUL in a header)."""


def _request_head(
    method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing:
        lines.append(framing)
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise UpstreamRequestError("a request header holds a line break or NUL")
    # Header values as aiohttp hands them over (bytes decoded as UTF-8, undecodable ones as
    # surrogates) go out as the very bytes the client sent; ASCII is unchanged either way.
    try:
        return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise UpstreamRequestError(f"a request header cannot be encoded: {error}") from None


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: certificates verified (against ``ca_file`` when given, else the
    system CA bundle) and the hostname checked; HTTP/1.1 offered by ALPN. Raises ``OSError``
    (``ssl.SSLError``) when the CA file cannot be read or holds no certificate."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def pool_for(
    url: str, tls: ssl.SSLContext | None = None, connect_retry_seconds: float = 0.0
) -> tuple[UpstreamPool, str]:
    """A pool for an ``http(s)://host[:port]/path`` URL and the request target (path and
    query). ``https`` means TLS with ``tls`` (default: :func:`tls_context`) and port 443 when
    none is given; ``http`` means plain HTTP and port 80."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s)://host[:port] URL")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = (tls or tls_context()) if secure else None
    pool = UpstreamPool(
        parts.hostname, port, tls=context, connect_retry_seconds=connect_retry_seconds
    )
    return pool, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class UpstreamPool:
    """Keep-alive connections to one host:port, reused most recently used first; over TLS
    when ``tls`` is given (the server's name for SNI and verification is ``host``)."""

    def __init__(
        self,
        host: str,
        port: int,
        max_idle: int = 64,
        *,
        tls: ssl.SSLContext | None = None,
        connect_retry_seconds: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.tls = tls
        self.connect_retry_seconds = connect_retry_seconds
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        default_port = 443 if tls is not None else 80
        self.authority = name if port == default_port else f"{name}:{port}"
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    def put_back(self, connection: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def _connect(self) -> _Connection:
        """A new connection. A refused one is tried again, with backoff, for up to
        ``connect_retry_seconds``: nothing was sent yet, so this is safe for any method, and a
        Service whose only pod is NotReady for a moment (a sidecar restarting) refuses."""
        give_up = time.monotonic() + self.connect_retry_seconds
        pause = _FIRST_CONNECT_PAUSE
        while True:
            try:
                return await self._open()
            except ConnectionRefusedError:
                if time.monotonic() + pause > give_up:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LAST_CONNECT_PAUSE)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.tls is None:
            _, connection = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        else:
            _, connection = await loop.create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host,
            )
        self._all.add(connection)
        return connection

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send a request; returns once the answer's headers arrived.

        A bytes body is sent with Content-Length; an async iterator is streamed chunked. When
        a reused keep-alive connection turns out closed before any answer byte, a bytes (or
        empty) body is sent once more on a fresh connection.
        """
        host = self.authority
        keep_alive = method != "HEAD"  # a HEAD answer has no body the parser could find
        if body is None or isinstance(body, bytes):
            payload = body or b""
            framing = f"Content-Length: {len(payload)}"
            if not keep_alive:
                framing += "\r\nConnection: close"
            message = _request_head(method, target, host, headers, framing) + payload
            for attempt in range(2):
                connection = self._idle.pop() if self._idle else await self._connect()
                reused = connection.reused
                pending = connection.start(message)
                try:
                    await pending.headers_done
                except UpstreamClosed:
                    if attempt == 0 and reused and not pending.received_any:
                        continue
                    raise
                except BaseException:
                    connection.pending = None
                    connection.close()
                    raise
                return UpstreamResponse(connection, pending, keep_alive)
            raise AssertionError("unreachable")
        # A client's Content-Length is kept (its body streams as is); else chunked framing.
        chunked = not any(name.lower() == "content-length" for name, _ in headers)
        framing = "Transfer-Encoding: chunked" if chunked else ""
        head = _request_head(method, target, host, headers, framing)
        connection = self._idle.pop() if self._idle else await self._connect()
        pending = connection.start(head)
        transport = connection.transport
        assert transport is not None

        async def send_body() -> None:
            try:
                async for chunk in body:
                    if chunk:
                        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await connection.drain()
                if chunked:
                    transport.write(b"0\r\n\r\n")
            finally:  # a generator body learns at once that nobody takes more of it
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()

        # Full duplex: the answer may begin while the body still streams (a stage that reads its
        # input as it is produced answers as it goes); the body goes on in its own task.
        sending = asyncio.ensure_future(send_body())
        try:
            await asyncio.wait({sending, pending.headers_done}, return_when=asyncio.FIRST_COMPLETED)
            if sending.done():
                if sending.cancelled():  # not by us: whoever produced the body stopped it
                    raise UpstreamClosed("the request body was cancelled before it was sent")
                sending.result()  # the body failed before the answer began: raise it
            await pending.headers_done
        except BaseException:
            sending.cancel()
            connection.pending = None
            connection.close()
            raise

        # A body that fails later cuts the exchange: the stage sees a truncated request.
        def body_done(task: asyncio.Future[None]) -> None:
            # Failed, or cancelled by anyone: an answer still arriving is not a complete one.
            if task.cancelled() or task.exception() is not None:
                connection._fail(UpstreamClosed("the request body could not be sent whole"))

        sending.add_done_callback(body_done)
        return UpstreamResponse(connection, pending, keep_alive, sending)

    def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
