"""The router's streamed answer: the output stage's body passed to the client as it arrives.

Until the stage's first body chunk, nothing is sent, so a failure is still an ordinary JSON error
(502 when the stream broke, 504 when the latency budget or ``timeoutSeconds`` ran out). Once the
status line is out, a broken or cut stream cannot become an error answer any more: the client
connection is closed without the final chunk (chunked framing) or short of ``Content-Length``
(when the stage gave one), so every HTTP client sees a truncated answer, never a complete one.

Outcomes (``penstock_pipeline_requests_total{outcome}``): ``ok``; ``stage_error`` / ``timeout``
before the first chunk; ``stream_aborted`` after it; ``client_closed`` when the client went away.
"""

from __future__ import annotations

import asyncio
import logging
import time

from penstock.contract.wire import CACHE_HEADER
from penstock.dataplane.errors import StageError
from penstock.dataplane.http1 import Request, StreamResponse
from penstock.dataplane.upstream import UpstreamClosed, UpstreamProtocolError, UpstreamResponse

log = logging.getLogger("penstock.router")


def visible(value: str | None) -> str | None:
    """A stage's header value worth passing on: printable ASCII only. Anything else (bytes
    past 0x7f, which arrive decoded as latin-1) is dropped rather than re-encoded into other
    bytes than the stage sent."""
    if value and value.isascii() and value.isprintable():
        return value
    return None


def _headers(upstream: UpstreamResponse) -> StreamResponse:
    out = StreamResponse(status=upstream.status)
    content_type = visible(upstream.header("Content-Type"))
    if content_type:
        out.headers["Content-Type"] = content_type
    cache = visible(upstream.header(CACHE_HEADER))
    if cache:
        out.headers[CACHE_HEADER] = cache
    if upstream.content_length is not None:
        out.content_length = upstream.content_length  # a short body is then visible as such
    return out


def _abort(request: Request) -> None:
    """Close the client connection after what was sent (no final chunk, no clean end)."""
    request.cut()


async def relay(
    request: Request, upstream: UpstreamResponse, stage: str, end: float, pipeline: str
) -> tuple[StreamResponse, str]:
    """Stream ``upstream`` (the output stage's open answer) to the client until ``end`` (a
    ``time.perf_counter()`` deadline); returns the response and the outcome. Raises
    :class:`StageError` when the stream fails before its first chunk (nothing sent yet)."""
    out: StreamResponse | None = None
    try:
        async with asyncio.timeout(max(0.0, end - time.perf_counter())):
            async for chunk in upstream.iter_chunks():
                if out is None:
                    out = _headers(upstream)
                    await out.prepare(request)
                await out.write(chunk)
            if out is None:  # an empty body
                out = _headers(upstream)
                await out.prepare(request)
            await out.write_eof()
        return out, "ok"
    except (TimeoutError, UpstreamClosed, UpstreamProtocolError) as error:  # before OSError
        upstream.close()
        where = "before its first chunk" if out is None else "mid-stream"
        if isinstance(error, TimeoutError):
            message = (
                f"stream of stage {stage!r} cut {where} at the latency budget or its timeoutSeconds"
            )
            status = 504
        else:
            message = f"stream of stage {stage!r} broke {where}: {error}"
            status = 502
        log.warning("pipeline %s: %s", pipeline, message)
        if out is None:
            raise StageError(stage, message, status) from None
        _abort(request)
        return out, "stream_aborted"
    except OSError as error:  # writing to the client failed: it went away
        upstream.close()
        log.info("pipeline %s: client left the stream of stage %r: %s", pipeline, stage, error)
        _abort(request)
        return out or StreamResponse(), "client_closed"
    finally:
        upstream.release()
