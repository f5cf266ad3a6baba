"""What a client can hold of a gateway or router, and for how long (both listen through here).

Per listener, every connection is in one of four states, each with a deadline:

- ``fresh``: accepted, no byte yet; closed after the header timeout.
- ``head``: a request head is arriving; it must be complete by the header timeout (counted from
  the accept, or from its first byte on a kept-alive connection), else a JSON 408 and close.
- ``busy``: a request is being handled; its body must have arrived by the body timeout (counted
  from the head), else the handler's read fails and the answer is a JSON 408 with close.
- ``idle``: kept alive between requests; closed after the idle timeout.

In any state, an answer the client stopped reading (the socket's send buffer full) for the idle
timeout closes the connection. At most ``max_connections`` are open per listener: a new one then
takes the place of the oldest connection that never completed a request (fresh, or still sending
its head), else of the longest-idle kept-alive one; when every connection is busy with a request,
the new one is answered a JSON 503 and closed, and the busy ones go on.
Deadlines are checked by one sweep per listener a few times a second, not timers per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler

from penstock.dataplane.limits import BodyTimeout, Identity, ServerLimits, open_files_allow

log = logging.getLogger("penstock.dataplane")

FRESH, HEAD, BUSY, IDLE = "fresh", "head", "busy", "idle"
_REFUSAL_LINGER = 1.0  # seconds a refused connection may take to read its 503


class Tracked(Protocol):
    """A connection a :class:`Listener` bounds: its transport and its deadline check."""

    @property
    def transport(self) -> Any: ...

    def check(self, now: float) -> None: ...


class Deadlines:
    """The sweep's rules for one connection, shared by the aiohttp handler (admin ports) and
    dataplane/http1's connection (serving ports): a client not reading its answer, a body past
    its timeout (``_check_body``), a fresh/head/idle connection past its deadline."""

    _listener: Listener
    _state: str
    _deadline: float
    _stalled: float

    def _transport(self) -> Any:
        raise NotImplementedError

    def _head_begins(self) -> None:
        """Bytes arrived: a fresh or idle connection is now receiving a request head."""
        if self._state == IDLE:
            self._state = HEAD
            self._deadline = time.monotonic() + self._listener.limits.header_timeout
        elif self._state == FRESH:
            self._state = HEAD  # the deadline from the accept stays

    def _check_body(self, now: float, limits: ServerLimits) -> None:
        raise NotImplementedError

    def check(self, now: float) -> None:
        transport = self._transport()
        if transport is None:
            if self._state == FRESH and now >= self._deadline:
                self._listener.lost(self)  # made by the factory, its connection never was
            return
        limits = self._listener.limits
        if self._stalled and now - self._stalled >= limits.idle_timeout:
            self._listener.closed_for("a client not reading its answer", self)
            transport.abort()
        elif self._state == BUSY:
            self._check_body(now, limits)
        elif now >= self._deadline:
            if transport.get_write_buffer_size():  # an answer is still on its way out
                self._stalled = self._stalled or now  # ... bounded by the rule above
                return
            if self._state == HEAD:
                message = f"request head not received within {limits.header_timeout:g} s"
                transport.write(self._listener.identity.raw(408, message))
            self._listener.closed_for(f"a {self._state} connection timing out", self)
            if transport.get_write_buffer_size():
                transport.abort()  # the 408 could not even be handed to the kernel
            else:
                transport.close()


class _Handler(Deadlines, web.RequestHandler):
    """aiohttp's connection handler, telling its listener what state it is in."""

    __slots__ = ("_body", "_body_deadline", "_deadline", "_listener", "_stalled", "_state")

    def __init__(self, manager: web.Server, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._state = FRESH
        self._deadline = time.monotonic() + listener.limits.header_timeout
        self._body: StreamReader | None = None
        self._body_deadline = 0.0
        self._stalled = 0.0  # since when the client has not read our answer (0: it reads)

    def _transport(self) -> Any:
        return self.transport

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.made(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_begins()
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stalled = time.monotonic()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stalled = 0.0

    # -- requests (from the middleware)
    def begin(self, body: StreamReader) -> None:
        self._state = BUSY
        self._listener.unlist(self)
        self._body_deadline = 0.0
        if not body.is_eof():
            self._body = body
            self._body_deadline = time.monotonic() + self._listener.limits.body_timeout

    def end(self) -> None:
        self._body = None
        self._state = IDLE
        self._deadline = time.monotonic() + self._listener.limits.idle_timeout
        if self in self._listener.open:  # not evicted or timed out meanwhile
            self._listener.idle[self] = None

    def body_timed_out(self) -> bool:
        return self._body_deadline < 0

    def body_timeout_answer(self) -> web.Response:
        seconds = self._listener.limits.body_timeout
        body = self._listener.identity.body(f"request body not received within {seconds:g} s")
        response = web.Response(status=408, body=body, content_type="application/json")
        response.force_close()
        return response

    # -- the sweep (the rules: Deadlines.check)
    def _check_body(self, now: float, limits: ServerLimits) -> None:
        body = self._body
        if body is not None and now >= self._body_deadline:
            self._body = None
            if not body.is_eof():
                self._body_deadline = -1.0
                seconds = f"{limits.body_timeout:g}"
                body.set_exception(BodyTimeout(f"request body not received within {seconds} s"))
                self.close()  # no further request on this connection

    # -- aiohttp's own error answers (bad HTTP, an exception escaping the app): JSON too
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error(
                "%s: error handling a request", self._listener.identity.describe, exc_info=exc
            )
            text = "internal error (logged)"
        else:  # a client's bad HTTP: one line, no traceback per hostile request
            detail = (message or HTTPStatus(status).phrase).split("\n")[0].strip().rstrip(":")
            text = f"bad HTTP request: {detail[:120]}"
            log.debug("%s: bad request: %s", self._listener.identity.describe, text)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer had begun: the connection is closed instead")
        response = web.Response(
            status=status, body=self._listener.identity.body(text), content_type="application/json"
        )
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection beyond the bound: a 503, then closed once the client read it (or soon)."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        tcp.write(self._listener.refusal)
        refusing = self._listener.refusing
        if len(refusing) > self._listener.limits.max_connections // 8 + 16:
            tcp.close()  # a flood: no time to wait for each client
            return
        self._transport = tcp
        refusing.add(tcp)
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_LINGER, tcp.abort)
        if tcp.can_write_eof():
            tcp.write_eof()  # the client reads the 503 and EOF, then closes: no reset

    def data_received(self, data: bytes) -> None:
        pass  # the request nobody will answer is read and dropped (so no reset loses the 503)

    def eof_received(self) -> bool:
        return False  # closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._listener.refusing.discard(self._transport)


class Listener:
    """One listening socket's connections: the bound, the eviction order, the sweep."""

    def __init__(self, limits: ServerLimits, identity: Identity) -> None:
        self.limits = limits
        self.identity = identity
        self.max_connections = open_files_allow(limits.max_connections)
        if self.max_connections < limits.max_connections:
            log.warning(
                "%s: the open-files limit allows %d connections, not --max-connections %d",
                identity.describe,
                self.max_connections,
                limits.max_connections,
            )
        self.open: set[Any] = set()  # Tracked connections
        # Not busy, longest first: who gives way to a new connection. First those that never
        # completed a request (fresh, or still sending a head), then kept-alive idle ones.
        self.fresh: dict[Any, None] = {}
        self.idle: dict[Any, None] = {}
        self.refusing: set[asyncio.Transport] = set()  # refused, reading their 503
        self.refused = self.evicted = self.timed_out = 0
        self.refusal = identity.raw(
            503,
            f"too many open connections (at most {self.max_connections}); retry shortly",
            "Retry-After: 1\r\n",
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._last_warning = 0.0

    def factory(self, connection: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for the listening socket: ``connection()`` makes a Tracked
        protocol that reports to this listener (made, unlist, lost)."""

        def make() -> asyncio.Protocol:
            if len(self.open) >= self.max_connections:
                waiting = self.fresh or self.idle
                if not waiting:
                    self.refused += 1
                    self._warn("refused a connection: every connection is busy")
                    return _Refused(self)
                victim = next(iter(waiting))
                self.evicted += 1
                self.lost(victim)
                if victim.transport is not None:
                    victim.transport.close()
            handler = connection()
            self.open.add(handler)
            self.fresh[handler] = None
            return cast(asyncio.Protocol, handler)

        return make

    def made(self, handler: Any) -> None:
        if handler not in self.open and handler.transport is not None:
            handler.transport.close()  # evicted before its connection was made

    def lost(self, handler: Any) -> None:
        self.open.discard(handler)
        self.unlist(handler)

    def unlist(self, handler: Any) -> None:
        self.fresh.pop(handler, None)
        self.idle.pop(handler, None)

    def closed_for(self, reason: str, handler: Any) -> None:
        self.timed_out += 1
        self.lost(handler)
        log.debug("%s: closed %s", self.identity.describe, reason)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "%s: %s (at most %d connections; refused %d, evicted %d so far)",
                self.identity.describe,
                message,
                self.max_connections,
                self.refused,
                self.evicted,
            )

    def start(self) -> None:
        limits = self.limits
        tick = max(0.05, min(1.0, limits.header_timeout / 4, limits.idle_timeout / 4))
        tick = max(0.05, min(tick, limits.body_timeout / 4))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(tick))

    async def _sweep(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for handler in list(self.open):
                try:
                    handler.check(now)
                except Exception:  # a bug must not end the sweep (and every bound with it)
                    log.exception("%s: checking a connection failed", self.identity.describe)
                    self.lost(handler)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for transport in list(self.refusing):
            transport.abort()


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the connection busy while a request is handled, arms the body timeout, and makes
    an answer to a request whose body timed out a 408 that closes the connection."""
    protocol = request.protocol
    if not isinstance(protocol, _Handler):
        return await handler(request)
    protocol.begin(request.content)
    try:
        try:
            response = await handler(request)
        except BodyTimeout:
            if not protocol.body_timed_out():
                raise
            response = web.Response()  # replaced below
        if protocol.body_timed_out() and not response.prepared:
            response = protocol.body_timeout_answer()  # whatever the handler made of it
        return response
    finally:
        protocol.end()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections a :class:`Listener` bounds and times."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        listener: Listener,
        handler_options: Mapping[str, Any],
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self.listener = listener
        self._options = dict(handler_options)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        listener, options = self.listener, self._options
        factory = listener.factory(lambda: _Handler(server, listener, loop=loop, **options))
        self._server = await loop.create_server(
            factory, self._host, self._port, reuse_address=True, backlog=self._backlog
        )
        self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        await super().stop()
