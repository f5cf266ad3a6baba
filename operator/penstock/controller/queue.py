"""One work queue that every trigger feeds: Pipeline create/update/resume, child events, the
resync loop (which carries the tuner). Like client-go's workqueue:

- deduplicated per key: a key already waiting is not queued twice (the newest body it was added
  with is kept), and a key added while it is being reconciled is run once more afterwards,
  never twice at once; that rerun gets no body (the running reconcile writes a newer status),
  so the work reads the Pipeline;
- rate-limited per key: after a failure the key comes back after an exponential backoff
  (``base_delay`` doubling up to ``max_delay``), reset by a success;
- a fixed number of workers, so a burst (a resync of 1,000 Pipelines) queues instead of
  starting 1,000 reconciles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("penstock.queue")

Key = tuple[str, str]
"""(namespace, name) of a Pipeline."""
Body = Mapping[str, Any]
Work = Callable[[Key, Body | None], Awaitable[None]]
"""Reconcile one key, from the body it was added with (a fresh list or event), else reading it."""


class WorkQueue:
    def __init__(
        self,
        work: Work,
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        quiet: tuple[type[BaseException], ...] = (),
        gate: asyncio.Event | None = None,
    ) -> None:
        """quiet: failures logged as a warning without a traceback (an apiserver refusal);
        gate: work waits while it is clear (a standby operator queues but does not write)."""
        self._work = work
        self._gate = gate
        self._quiet = quiet
        self._workers = workers
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()  # waiting in _ready
        self._bodies: dict[Key, Body] = {}  # the newest body of a waiting key, when known
        self._active: set[Key] = set()  # being reconciled
        self._again: set[Key] = set()  # added while active: run once more after
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.retries = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def add(self, key: Key, body: Body | None = None, delay: float = 0.0) -> None:
        """Queue a reconcile of key (after ``delay`` seconds, e.g. to collapse child events)."""
        if body is not None and key not in self._active:
            self._bodies[key] = body
        if delay > 0:
            if key not in self._timers and key not in self._queued:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        self._enqueue(key)

    def forget(self, key: Key) -> None:
        """The Pipeline is gone: drop what is pending for it (a running reconcile finishes)."""
        handle = self._timers.pop(key, None)
        if handle:
            handle.cancel()
        self._queued.discard(key)
        self._again.discard(key)
        self._bodies.pop(key, None)
        self._failures.pop(key, None)

    def pending(self) -> int:
        return len(self._queued) + len(self._timers) + len(self._active)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._enqueue(key)

    def _enqueue(self, key: Key) -> None:
        if key in self._active:
            self._again.add(key)
            self._bodies.pop(key, None)
            return
        if key in self._queued:
            return
        handle = self._timers.pop(key, None)  # an earlier delayed add: now is sooner
        if handle:
            handle.cancel()
        self._queued.add(key)
        self._ready.put_nowait(key)

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            waited = self._gate is not None and not self._gate.is_set()
            if self._gate is not None:
                await self._gate.wait()
            if waited:  # queued by a standby: another operator may have written since
                self._bodies.pop(key, None)
            if key not in self._queued:  # forgotten while waiting
                continue
            self._queued.discard(key)
            self._active.add(key)
            started = time.monotonic()
            try:
                await self._work(key, self._bodies.pop(key, None))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._back_off(key, error)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
                log.debug("reconciled %s/%s in %.3fs", *key, time.monotonic() - started)
            if key in self._again:
                self._again.discard(key)
                self._enqueue(key)

    def _back_off(self, key: Key, error: Exception) -> None:
        """Run key again after a delay doubling with each failure in a row."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
        self.retries += 1
        log.warning(
            "reconcile of %s/%s failed (attempt %d, again in %.1fs): %s",
            *key,
            failures,
            delay,
            error,
            exc_info=not isinstance(error, self._quiet),
        )
        self._again.discard(key)  # the backoff decides when, not a trigger during the run
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)
