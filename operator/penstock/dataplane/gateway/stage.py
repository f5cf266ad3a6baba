"""The gateway's side of the stage: one keep-alive pool to the stage container, the calls the
proxy makes (a buffered answer, an open stream or a clear failure; a batch), and the readiness
checks (``/healthz``, warmup requests)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from penstock.api.features import HOP_BY_HOP_HEADERS
from penstock.dataplane.gateway.answers import Answer, Failure, Outcome
from penstock.dataplane.gateway.batching import BatchResponse
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.upstream import (
    UpstreamClosed,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)

log = logging.getLogger("penstock.gateway")

NOT_FORWARDED_REQUEST = frozenset({"host", "content-length", "expect"})
NOT_FORWARDED_STREAMED = frozenset({"host", "expect"})  # a streamed body keeps its length
NOT_FORWARDED_RESPONSE = frozenset({"content-length"})
_SKIP = {
    drop: HOP_BY_HOP_HEADERS | drop
    for drop in (NOT_FORWARDED_REQUEST, NOT_FORWARDED_STREAMED, NOT_FORWARDED_RESPONSE)
}


def strip_headers(
    headers: Mapping[str, str] | list[tuple[str, str]], drop: frozenset[str]
) -> list[tuple[str, str]]:
    """Headers (a mapping or name/value pairs) without hop-by-hop ones (also those named in
    ``Connection``) and ``drop`` (lower-case names).

    Request header values stay as the server decoded them (UTF-8, undecodable bytes as
    surrogates): the upstream client writes them back as the exact bytes the caller sent.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    skip = _SKIP.get(drop) or (HOP_BY_HOP_HEADERS | drop)
    kept = [(name, value) for name, value in pairs if name.lower() not in skip]
    if len(kept) == len(pairs) or not any(n.lower() == "connection" for n, _ in pairs):
        return kept
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(name, value) for name, value in kept if name.lower() not in named]


def is_streaming(response: UpstreamResponse) -> bool:
    content_type = response.header("content-type") or ""
    return response.content_length is None or content_type.startswith("text/event-stream")


def describe(error: BaseException) -> str:
    if isinstance(error, UpstreamClosed | UpstreamProtocolError):
        return str(error)
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to the stage ({error.strerror or error})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class OpenStream:
    """An upstream response whose body has not been read yet."""

    response: UpstreamResponse
    started: float


class StageClient:
    """The calls to one stage container, each bounded by the stage's timeout."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        upstream = urlsplit(config.upstream)
        self._pool = UpstreamPool(upstream.hostname or "127.0.0.1", upstream.port or 80)
        self._prefix = upstream.path.rstrip("/")

    def close(self) -> None:
        self._pool.close()

    async def fetch(
        self, method: str, path: str, body: bytes | None, headers: list[tuple[str, str]]
    ) -> tuple[int, bytes]:
        """A whole exchange with the stage (readiness, warmup, batches)."""
        response = await self._pool.request(method, self._prefix + path, headers, body)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def call(
        self,
        method: str,
        path_qs: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        always_stream: bool = False,
        deadline: float | None = None,
    ) -> Outcome | OpenStream:
        """One call to the stage: a buffered answer, an open stream, or a clear failure.

        It may take timeoutSeconds, or until ``deadline`` (loop time) when that is given."""
        config = self.config
        target = self._prefix + path_qs  # as sent
        started = time.perf_counter()
        response: UpstreamResponse | None = None
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + config.timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._pool.request(method, target, headers, body)
                if always_stream or is_streaming(response):
                    opened = OpenStream(response, started)
                    response = None
                    return opened
                data = await response.read()
        except TimeoutError:
            return Failure(
                504,
                f"stage {config.stage!r} did not answer within {config.timeout_seconds:g}s",
                config.stage,
                "timeout",
                held_seconds=time.perf_counter() - started,
            )
        except OSError as error:
            return Failure(
                502,
                f"stage {config.stage!r} failed: {describe(error)}",
                config.stage,
                "upstream_error",
                held_seconds=time.perf_counter() - started,
            )
        finally:
            if response is not None:
                response.release()
        return Answer(
            response.status,
            tuple(strip_headers(response.headers, NOT_FORWARDED_RESPONSE)),
            data,
            held_seconds=time.perf_counter() - started,
        )

    async def send_batch(
        self, items: list[bytes], headers: dict[str, str]
    ) -> BatchResponse | Failure:
        """One POST of the items' own JSON texts (each checked strict JSON) as an array."""
        config = self.config
        assert config.batch_path is not None
        payload = b"[" + b",".join(items) + b"]"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(config.timeout_seconds):
                status, body = await self.fetch(
                    "POST", config.batch_path, payload, list(headers.items())
                )
                return BatchResponse(status, body)
        except TimeoutError:
            message = (
                f"stage {config.stage!r} did not answer the batch of {len(items)}"
                f" within {config.timeout_seconds:g}s"
            )
            return Failure(504, message, config.stage, "timeout", time.perf_counter() - started)
        except OSError as error:
            message = f"stage {config.stage!r} batch call failed: {describe(error)}"
            return Failure(
                502, message, config.stage, "upstream_error", time.perf_counter() - started
            )

    async def healthy(self) -> str | None:
        """None when the stage's /healthz answers 200, else why not."""
        try:
            async with asyncio.timeout(min(self.config.timeout_seconds, 5.0)):
                status, _ = await self.fetch("GET", "/healthz", None, [])
                if status == 200:
                    return None
                return f"stage /healthz answered HTTP {status}"
        except (OSError, TimeoutError) as error:
            return f"stage /healthz failed: {describe(error)}"
        except Exception as error:  # a bug must not end the readiness loop
            log.exception("stage %s: /healthz check failed", self.config.stage)
            return f"stage /healthz check failed: {describe(error)}"

    async def warmup(self, progress: Callable[[str], None]) -> str | None:
        """None once every warmup request got a 2xx, else why not; ``progress`` hears each."""
        config = self.config
        json_type = [("Content-Type", "application/json")]
        for number in range(1, config.warmup_requests + 1):
            progress(f"warmup request {number}/{config.warmup_requests}")
            try:
                async with asyncio.timeout(config.timeout_seconds):
                    status, _ = await self.fetch(
                        "POST", config.warmup_path, config.warmup_body, json_type
                    )
                    if not 200 <= status <= 299:
                        return f"warmup request {number} answered HTTP {status}"
            except (OSError, TimeoutError) as error:
                return f"warmup request {number} failed: {describe(error)}"
            except Exception as error:  # a bug must not end the readiness loop
                log.exception("stage %s: warmup request failed", config.stage)
                return f"warmup request {number} failed: {describe(error)}"
        return None
