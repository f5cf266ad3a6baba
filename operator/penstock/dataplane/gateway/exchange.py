"""One exchange through the gateway: what is recorded about it, what a (possibly shared) call
produced, how the request body is judged, and how the answer goes back to the caller."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from penstock.contract.wire import CACHE_HEADER
from penstock.dataplane.gateway.answers import Answer, Failure, Outcome
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.gateway.savings import Saving
from penstock.dataplane.gateway.sharing import NOTHING_SAID, Sharing, answer_sharing
from penstock.dataplane.gateway.stage import (
    NOT_FORWARDED_RESPONSE,
    OpenStream,
    describe,
    strip_headers,
)
from penstock.dataplane.gateway.telemetry import request_cost_usd
from penstock.dataplane.gateway.usage import TokenUsage
from penstock.dataplane.http1 import Answer as Reply
from penstock.dataplane.http1 import Request, Response, StreamResponse
from penstock.dataplane.upstream import UpstreamClosed, UpstreamProtocolError

log = logging.getLogger("penstock.gateway")


@dataclass
class Record:
    """What the span and the metrics say about one request."""

    outcome: str = "ok"
    cache_hit: bool | None = None
    batch_size: int | None = None
    cost: float = 0.0
    saving: Saving | None = None
    usage: TokenUsage | None = None


@dataclass
class Produced:
    """What a (possibly shared) call produced, and the request headers it was made for."""

    outcome: Outcome | OpenStream
    made_for: Mapping[str, str]
    _sharing: Sharing | None = field(default=None, repr=False)

    @property
    def sharing(self) -> Sharing:
        if self._sharing is None:
            outcome = self.outcome
            self._sharing = (
                answer_sharing(outcome.headers) if isinstance(outcome, Answer) else NOTHING_SAID
            )
        return self._sharing


def declares_json(content_type: str | None) -> bool:
    """Is the body declared JSON (or not declared at all)?"""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


def charset_problem(content_type: str | None) -> str | None:
    """A ``charset`` other than UTF-8 (the stage could read the bytes differently)."""
    if content_type is None or ";" not in content_type:
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                return f"declares charset={charset}; JSON must be UTF-8 (RFC 8259)"
    return None


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status < 500:
        return "client_error"
    return "stage_error"


def failure_response(failure: Failure, record: Record, cache: str) -> Response:
    record.outcome = failure.outcome
    response = Response(
        status=failure.status,
        body=failure.body(),
        content_type="application/json",
        headers={CACHE_HEADER: cache},
    )
    if failure.retry_after is not None:
        response.headers["Retry-After"] = str(failure.retry_after)
    return response


async def respond(
    request: Request,
    result: Outcome | OpenStream,
    record: Record,
    cache_state: str,
    sharers: int,
    config: GatewayConfig,
) -> Reply:
    """The caller's answer: the stage's (buffered or streamed) or the gateway's failure."""
    if isinstance(result, OpenStream):
        return await _stream(request, result, record, cache_state, config)
    record.batch_size = result.batch_size
    record.cost = request_cost_usd(config.hourly_cost, result.held_seconds, sharers)
    if isinstance(result, Failure):
        return failure_response(result, record, cache_state)
    record.outcome = outcome_of(result.status)
    response = Response(status=result.status, body=result.body, headers=result.headers)
    response.headers[CACHE_HEADER] = cache_state
    return response


async def _stream(
    request: Request,
    opened: OpenStream,
    record: Record,
    cache_state: str,
    config: GatewayConfig,
) -> Reply:
    upstream = opened.response
    out = StreamResponse(status=upstream.status)
    out.headers.extend(strip_headers(upstream.headers, NOT_FORWARDED_RESPONSE))
    out.headers[CACHE_HEADER] = cache_state
    if upstream.content_length is not None:
        out.content_length = upstream.content_length
    record.outcome = outcome_of(upstream.status)
    stage = config.stage
    try:
        await out.prepare(request)
        async for chunk in upstream.iter_chunks():
            await out.write(chunk)
        await out.write_eof()
    except (UpstreamClosed, UpstreamProtocolError, TimeoutError) as error:
        record.outcome = "upstream_error"
        log.warning("stage %s stream broke: %s", stage, describe(error))
        upstream.close()
        request.cut()  # the client sees a truncated response, not EOF
    except ConnectionError:
        record.outcome = "client_closed"
        upstream.close()
    except Exception:  # the response has started: it can only be cut, not replaced
        record.outcome = "gateway_error"
        log.exception("stage %s: unexpected error while streaming", stage)
        upstream.close()
        request.cut()
    finally:
        upstream.release()
        record.cost = request_cost_usd(config.hourly_cost, time.perf_counter() - opened.started)
    return out
