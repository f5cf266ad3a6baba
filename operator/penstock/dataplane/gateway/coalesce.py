"""In-flight coalescing: identical concurrent requests share one upstream call.

Whether a follower may take the leader's result is the caller's decision (see
``dataplane/gateway/sharing.py``); when a key's answer could not be shared, :meth:`Coalescer.unshareable`
remembers it for a few seconds so that its next callers go to the stage at once instead of
queueing behind a call whose answer they cannot have (Varnish's "hit-for-pass").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

PASS_SECONDS = 10.0
MAX_PASS_KEYS = 4096


@dataclass
class _Call(Generic[T]):
    future: asyncio.Future[T]
    sharers: int = 1


@dataclass(frozen=True)
class Shared(Generic[T]):
    """The shared result, whether this caller made the call, and how many callers shared it."""

    value: T
    leader: bool
    sharers: int


class Coalescer(Generic[T]):
    """Runs ``work`` once per key among concurrent callers; all of them get its result.

    The leader's ``work`` runs in the leader's task; if it raises, every waiting caller gets
    the same exception. The key is forgotten as soon as the work finishes, so later callers
    start a new call (this is not a cache).
    """

    def __init__(self, *, pass_seconds: float = PASS_SECONDS) -> None:
        self._calls: dict[str, _Call[T]] = {}
        self._pass: dict[str, float] = {}  # key -> monotonic time until which not to coalesce
        self._pass_seconds = pass_seconds
        self.coalesced = 0

    def unshareable(self, key: str) -> None:
        """The answer for ``key`` could not be shared: do not coalesce it for a while."""
        self._pass.pop(key, None)
        self._pass[key] = time.monotonic() + self._pass_seconds
        if len(self._pass) > MAX_PASS_KEYS:
            del self._pass[next(iter(self._pass))]  # the oldest

    def passes(self, key: str) -> bool:
        """Should callers of ``key`` go to the stage without coalescing?"""
        if not self._pass:
            return False
        until = self._pass.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._pass[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> Shared[T]:
        call = self._calls.get(key)
        if call is not None:
            call.sharers += 1
            self.coalesced += 1
            value = await asyncio.shield(call.future)
            return Shared(value, leader=False, sharers=call.sharers)
        loop = asyncio.get_running_loop()
        call = _Call(loop.create_future())
        self._calls[key] = call
        try:
            value = await work()
        except BaseException as error:
            self._calls.pop(key, None)
            if isinstance(error, asyncio.CancelledError):
                call.future.set_exception(RuntimeError("the shared upstream call was cancelled"))
            else:
                call.future.set_exception(error)
            call.future.exception()  # mark retrieved: followers may not exist
            raise
        self._calls.pop(key, None)
        call.future.set_result(value)
        return Shared(value, leader=True, sharers=call.sharers)
