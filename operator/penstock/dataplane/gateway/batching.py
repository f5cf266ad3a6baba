"""Dynamic batching: gather single requests into one call of the stage's batch endpoint.

A batch is sent when it holds ``max_size`` items or ``max_latency`` seconds after its first
item arrived, whichever comes first; up to ``max_inflight`` batches run concurrently. While
that many are out, requests keep collecting and go in the next batch as soon as one returns
(a busy stage gets full batches instead of a queue of small ones, as Triton's dynamic batcher
does). The stage answers a JSON array of the same length, in order; anything else fails
exactly that batch's callers.

The queue of items not yet sent is bounded (``max_queue``): a request arriving at a full queue
gets a 503 with ``Retry-After`` at once. Every item has a deadline (the request's arrival plus
the stage's ``timeoutSeconds``): an item still queued, or in a batch still out, at its deadline
gets a 504 then, and an expired item is never sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from penstock.dataplane.gateway.answers import Answer, Failure, Outcome

log = logging.getLogger("penstock.gateway.batching")


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
    text = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Answer(200, _JSON, text.encode(), held_seconds=held_seconds, batch_size=batch_size)


def _item_outcome(item: Any, stage: str, held: float, size: int) -> Outcome:
    """One item's answer; an item that cannot be JSON (a lone surrogate, NaN) fails alone."""
    try:
        return item_answer(item, held, size)
    except (ValueError, TypeError) as error:  # UnicodeEncodeError is a ValueError
        message = f"stage {stage!r} answered a batch item that is not JSON text: {error}"
        return Failure(502, message, stage, "upstream_error", held, size)


# A batch path's raw answer, a failure of the whole batch, or (prompt packing) one outcome per item.
Send = Callable[[list[Any]], Awaitable[BatchResponse | Failure | list[Outcome]]]


@dataclass(slots=True)
class _Item:
    payload: Any
    future: asyncio.Future[Outcome]
    deadline: float | None = None
    sent: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Batcher:
    """Collects items and sends them with ``send``; ``submit`` returns that item's outcome.

    ``max_inflight`` bounds the batches out at once and ``max_queue`` the items waiting to be
    sent (``None``: no bound); ``timeout`` is the stage's timeoutSeconds, for messages.
    """

    def __init__(
        self,
        send: Send,
        *,
        stage: str,
        max_size: int,
        max_latency: float,
        max_inflight: int | None = None,
        max_queue: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self._send = send
        self._stage = stage
        self.max_size = max_size
        self.max_latency = max_latency
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._timeout = timeout
        self._pending: list[_Item] = []
        self._first_at = 0.0  # loop time the oldest pending item arrived
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_batch: Callable[[int], None] | None = None
        # Called with (size, seconds) after a batch the stage answered (the savings model).
        self.on_done: Callable[[int, float], None] | None = None

    def _has_slot(self) -> bool:
        return self.max_inflight is None or len(self._tasks) < self.max_inflight

    def queued(self) -> int:
        """Items waiting to be sent (expired and cancelled ones not counted)."""
        return sum(1 for item in self._pending if not item.future.done())

    async def submit(self, item: Any, deadline: float | None = None) -> Outcome:
        """``item``'s outcome; ``deadline`` is the loop time at which it gets a 504 instead."""
        loop = asyncio.get_running_loop()
        if self._closed:
            return Failure(503, "gateway is shutting down", self._stage, "not_ready")
        if self.max_queue is not None and len(self._pending) >= self.max_queue:
            self._pending = [entry for entry in self._pending if not entry.future.done()]
            if len(self._pending) >= self.max_queue:
                return self._shed()
        future: asyncio.Future[Outcome] = loop.create_future()
        entry = _Item(item, future, deadline)
        if deadline is not None:
            entry.timer = loop.call_at(deadline, self._expire, entry)
        if not self._pending:
            self._first_at = loop.time()
        self._pending.append(entry)
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None and self._has_slot():
            self._timer = loop.call_later(self.max_latency, self._flush)
        try:
            return await future
        finally:
            if entry.timer is not None:
                entry.timer.cancel()
            if not future.done():
                future.cancel()  # the caller went away: never sent if still queued

    def _shed(self) -> Failure:
        message = (
            f"stage {self._stage!r} is overloaded: the batch queue is full"
            f" ({self.max_queue} requests waiting); retry later"
        )
        return Failure(503, message, self._stage, "overloaded", retry_after=1)

    def _expire(self, entry: _Item) -> None:
        if entry.future.done():
            return
        within = f" within {self._timeout:g}s" if self._timeout is not None else " in time"
        where = "its batch is still at the stage" if entry.sent else "it waited in the batch queue"
        message = f"stage {self._stage!r} did not answer{within} ({where})"
        entry.future.set_result(Failure(504, message, self._stage, "timeout"))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        if self._has_slot() and any(entry.future.done() for entry in self._pending):
            self._pending = [entry for entry in self._pending if not entry.future.done()]
        while self._pending and self._has_slot():
            batch = self._pending[: self.max_size]
            self._pending = self._pending[self.max_size :]
            for entry in batch:
                entry.sent = True
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

    async def _run(self, batch: list[_Item]) -> None:
        size = len(batch)
        if self.on_batch is not None:
            self.on_batch(size)
        started = time.perf_counter()
        outcomes: list[Outcome]
        response: BatchResponse | Failure | list[Outcome]
        try:
            response = await self._send([entry.payload for entry in batch])
        except Exception as error:  # a bug or an unexpected client error: fail this batch only
            log.exception("stage %s: batch call failed", self._stage)
            response = Failure(502, f"batch call failed: {error}", self._stage, "upstream_error")
        took = time.perf_counter() - started
        held = took / size
        if isinstance(response, list):
            outcomes = response
            if self.on_done is not None:
                self.on_done(size, took)
        elif isinstance(response, Failure):
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
                outcomes = [_item_outcome(item, self._stage, held, size) for item in items]
                if self.on_done is not None:
                    self.on_done(size, took)
        for entry, outcome in zip(batch, outcomes, strict=True):
            if not entry.future.done():
                entry.future.set_result(outcome)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_result(
                    Failure(503, "gateway is shutting down", self._stage, "not_ready")
                )
        self._pending = []
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
