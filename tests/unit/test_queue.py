"""The operator's work queue (controller/queue.py): one reconcile per key at a time, duplicates
collapsed, a key added while running runs once more, failures back off, forgotten keys drop."""

from __future__ import annotations

import asyncio

from penstock.controller.queue import Key, WorkQueue

A: Key = ("ns", "a")
B: Key = ("ns", "b")


class Recorder:
    def __init__(self, hold: float = 0.0, fail: int = 0) -> None:
        self.calls: list[Key] = []
        self.bodies: list[object] = []
        self.running: set[Key] = set()
        self.overlaps = 0
        self.hold = hold
        self.fail = fail

    async def __call__(self, key: Key, body: object) -> None:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.calls.append(key)
        self.bodies.append(body)
        try:
            await asyncio.sleep(self.hold)
            if self.fail:
                self.fail -= 1
                raise RuntimeError("apiserver said no")
        finally:
            self.running.discard(key)


async def settle(queue: WorkQueue, seconds: float = 2.0) -> None:
    """Until nothing is waiting, running or backing off (at most ``seconds``)."""
    for _ in range(int(seconds / 0.01)):
        if not queue.pending():
            return
        await asyncio.sleep(0.01)


async def test_duplicates_waiting_collapse_into_one_reconcile() -> None:
    work = Recorder()
    queue = WorkQueue(work, workers=2)
    for _ in range(5):
        queue.add(A)
    queue.add(B)
    queue.start()
    await settle(queue)
    await queue.stop()
    assert sorted(work.calls) == [A, B]


async def test_a_key_added_while_running_runs_once_more_never_twice_at_once() -> None:
    work = Recorder(hold=0.1)
    queue = WorkQueue(work, workers=4)
    queue.start()
    queue.add(A)
    await asyncio.sleep(0.03)  # A is running now
    for _ in range(3):
        queue.add(A)
    await settle(queue)
    await queue.stop()
    assert work.calls == [A, A] and work.overlaps == 0


async def test_a_failure_comes_back_with_growing_backoff_then_succeeds() -> None:
    work = Recorder(fail=2)
    queue = WorkQueue(work, workers=1, base_delay=0.05, max_delay=1.0)
    queue.start()
    started = asyncio.get_running_loop().time()
    queue.add(A)
    await settle(queue)
    elapsed = asyncio.get_running_loop().time() - started
    await queue.stop()
    assert work.calls == [A, A, A] and queue.retries == 2
    assert elapsed >= 0.05 + 0.1  # 0.05 s, then 0.1 s


async def test_a_delayed_add_collapses_a_burst_of_child_events() -> None:
    work = Recorder()
    queue = WorkQueue(work)
    queue.start()
    for _ in range(10):
        queue.add(A, delay=0.05)
    await asyncio.sleep(0.02)
    assert work.calls == []
    await settle(queue)
    await queue.stop()
    assert work.calls == [A]


async def test_a_forgotten_key_is_not_reconciled() -> None:
    work = Recorder()
    queue = WorkQueue(work)
    queue.add(A)
    queue.add(B, delay=0.05)
    queue.forget(A)
    queue.forget(B)
    queue.start()
    await asyncio.sleep(0.1)
    await queue.stop()
    assert work.calls == []


async def test_the_workers_bound_concurrency() -> None:
    work = Recorder(hold=0.05)
    queue = WorkQueue(work, workers=2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(work.running))
            await asyncio.sleep(0.005)

    watcher = asyncio.get_running_loop().create_task(watch())
    for number in range(8):
        queue.add(("ns", f"p{number}"))
    queue.start()
    await settle(queue)
    watcher.cancel()
    await queue.stop()
    assert len(work.calls) == 8 and peak == 2


async def test_the_newest_body_is_passed_and_a_rerun_reads_afresh() -> None:
    work = Recorder(hold=0.1)
    queue = WorkQueue(work)
    queue.add(A, {"v": 1})
    queue.add(A, {"v": 2})  # still waiting: the newer body wins
    queue.start()
    await asyncio.sleep(0.03)  # running with v2 now
    queue.add(A, {"v": 3})  # while running: its status is about to change, so no body
    await settle(queue)
    queue.add(B, delay=0.01)  # a child event carries no body
    await settle(queue)
    await queue.stop()
    assert work.calls == [A, A, B]
    assert work.bodies == [{"v": 2}, None, None]
