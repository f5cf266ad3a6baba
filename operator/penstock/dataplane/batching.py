"""Dynamic batching: gather single requests into one call of the stage's batch endpoint.

A batch is sent when it holds ``max_size`` items or ``max_latency`` seconds after its first
item arrived, whichever comes first; up to ``max_inflight`` batches run concurrently. While
that many are out, requests keep collecting and go in the next batch as soon as one returns
(a busy stage gets full batches instead of a queue of small ones, as Triton's dynamic batcher
does). The stage answers a JSON array of the same length, in order; anything else fails
exactly that batch's callers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from penstock.dataplane.answers import Answer, Failure, Outcome


@dataclass(frozen=True)
class BatchResponse:
    """The stage's raw answer to a batch call."""

    status: int
    body: bytes


class BatchError(ValueError):
    """The batch answer cannot be split back to its callers."""


def split_batch_answer(status: int, body: bytes, size: int) -> list[Any]:
    """The answer's items in request order, or :class:`BatchError` naming what is wrong."""
    if not 200 <= status <= 299:
        snippet = body[:200].decode("utf-8", "replace")
        raise BatchError(f"batch call answered HTTP {status}: {snippet}")
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BatchError(f"batch answer is not JSON: {error}") from None
    if not isinstance(items, list):
        raise BatchError(f"batch answer is a JSON {type(items).__name__}, not an array")
    if len(items) != size:
        raise BatchError(f"batch answer has {len(items)} items for {size} inputs")
    return items


_JSON = (("Content-Type", "application/json"),)


def item_answer(item: Any, held_seconds: float, batch_size: int) -> Answer:
    body = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()
    return Answer(200, _JSON, body, held_seconds=held_seconds, batch_size=batch_size)


Send = Callable[[list[Any]], Awaitable[BatchResponse | Failure]]


class Batcher:
    """Collects items and sends them with ``send``; ``submit`` returns that item's outcome.

    ``max_inflight`` bounds the batches out at once (``None``: no bound).
    """

    def __init__(
        self,
        send: Send,
        *,
        stage: str,
        max_size: int,
        max_latency: float,
        max_inflight: int | None = None,
    ) -> None:
        self._send = send
        self._stage = stage
        self.max_size = max_size
        self.max_latency = max_latency
        self.max_inflight = max_inflight
        self._pending: list[tuple[Any, asyncio.Future[Outcome]]] = []
        self._first_at = 0.0  # loop time the oldest pending item arrived
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_batch: Callable[[int], None] | None = None

    def _has_slot(self) -> bool:
        return self.max_inflight is None or len(self._tasks) < self.max_inflight

    async def submit(self, item: Any) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if not self._pending:
            self._first_at = loop.time()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None and self._has_slot():
            self._timer = loop.call_later(self.max_latency, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._pending and self._has_slot():
            batch = self._pending[: self.max_size]
            self._pending = self._pending[self.max_size :]
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)
        if self._pending:
            self._first_at = loop.time()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._closed or not self._pending or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._first_at + self.max_latency - loop.time()
        if len(self._pending) >= self.max_size or wait <= 0:
            self._flush()
        else:
            self._timer = loop.call_later(wait, self._flush)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Outcome]]]) -> None:
        size = len(batch)
        if self.on_batch is not None:
            self.on_batch(size)
        started = time.perf_counter()
        outcomes: list[Outcome]
        try:
            response = await self._send([item for item, _ in batch])
        except Exception as error:  # a bug or an unexpected client error: fail this batch only
            response = Failure(502, f"batch call failed: {error}", self._stage, "upstream_error")
        held = (time.perf_counter() - started) / size
        if isinstance(response, Failure):
            failure = Failure(
                response.status,
                response.message,
                self._stage,
                response.outcome,
                held_seconds=held,
                batch_size=size,
            )
            outcomes = [failure] * size
        else:
            try:
                items = split_batch_answer(response.status, response.body, size)
            except BatchError as error:
                message = f"stage {self._stage!r}: {error}"
                bad = Failure(502, message, self._stage, "upstream_error", held, size)
                outcomes = [bad] * size
            else:
                outcomes = [item_answer(item, held, size) for item in items]
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, future in self._pending:
            if not future.done():
                future.set_result(
                    Failure(503, "gateway is shutting down", self._stage, "not_ready")
                )
        self._pending = []
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
