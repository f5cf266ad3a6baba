"""The data plane's error answers: JSON ``{"error": ..., <who answered>...}``, never text."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger("penstock.dataplane")

_KEPT_HEADERS = frozenset({"allow", "retry-after"})  # what 405 / 503 tell a client


class StageError(Exception):
    """A stage failed, ran out of time or is overloaded; ``status`` is the router's HTTP
    answer (502/504/503), ``retry_after`` the overloaded stage's Retry-After."""

    def __init__(
        self, stage: str, message: str, status: int = 502, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.status = status
        self.retry_after = retry_after


def json_error(
    status: int,
    message: str,
    identity: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``{"error": message, **identity}`` with ``status``; identity names who answered
    (``{"pipeline": ...}`` for the router, plus ``"stage"`` when a stage is to blame)."""
    return web.json_response({"error": message, **identity}, status=status, headers=headers)


def error_middleware(who: str, serves: str, identity: Mapping[str, str]) -> Middleware:
    """Every error answer of an app as JSON: aiohttp's own (404 no such route, 405 wrong
    method, 413 body too large, ...) with a message naming ``who`` answered and what it
    ``serves``, and any unexpected exception as a logged 500 (never aiohttp's text/plain
    "Server got itself in trouble")."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise  # a redirect or success is not an error
            if error.status in (404, 405):
                message = f"{who} has no {request.method} {request.path}; it serves {serves}"
            else:
                message = f"{who}: {error.reason}" + (f" ({error.text})" if error.text else "")
            headers = {k: v for k, v in error.headers.items() if k.lower() in _KEPT_HEADERS}
            return json_error(error.status, message, identity, headers)
        except Exception:  # asyncio.CancelledError is no Exception: it passes
            if request.writer.output_size > 0:  # the answer has begun: cut it, never extend it
                if request.transport is not None:
                    request.transport.close()
                raise
            log.exception("%s: internal error on %s %s", who, request.method, request.path)
            return json_error(500, f"{who}: internal error (logged)", identity)

    return middleware
