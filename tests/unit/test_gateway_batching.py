"""Unit tests: splitting batch answers, the batcher's sizing and failure isolation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from penstock.dataplane.gateway.answers import Answer, Failure
from penstock.dataplane.gateway.batching import (
    Batcher,
    BatchError,
    BatchResponse,
    split_batch_answer,
)


def test_split_returns_items_in_order() -> None:
    assert split_batch_answer(200, b'[{"y": 1}, 2, "three"]', 3) == [{"y": 1}, 2, "three"]


@pytest.mark.parametrize(
    ("status", "body", "size", "message"),
    [
        (200, b"[1, 2]", 3, "2 items for 3 inputs"),
        (200, b"[1, 2, 3, 4]", 3, "4 items for 3 inputs"),
        (200, b'{"items": [1, 2, 3]}', 3, "JSON dict, not an array"),
        (200, b"null", 1, "JSON NoneType, not an array"),
        (200, b"[1, 2", 2, "not JSON"),
        (200, b"\xff\xfe", 1, "not JSON"),
        (500, b"boom", 2, "HTTP 500: boom"),
    ],
)
def test_malformed_answers_are_named(status: int, body: bytes, size: int, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        split_batch_answer(status, body, size)


class FakeStage:
    def __init__(self, answer: Any = None, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.answer = answer
        self.delay = delay

    async def send(self, items: list[Any]) -> BatchResponse | Failure:
        self.batches.append(items)
        await asyncio.sleep(self.delay)
        if self.answer is not None:
            return self.answer(items)  # type: ignore[no-any-return]
        return BatchResponse(200, json.dumps([{"out": item} for item in items]).encode())


async def test_full_batches_go_at_once_and_answers_keep_order() -> None:
    stage = FakeStage()
    batcher = Batcher(stage.send, stage="embed", max_size=4, max_latency=10.0)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(8))), timeout=2
    )
    assert stage.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for index, outcome in enumerate(outcomes):
        assert isinstance(outcome, Answer)
        assert json.loads(outcome.body) == {"out": index}
        assert outcome.batch_size == 4


async def test_partial_batch_goes_after_max_latency() -> None:
    stage = FakeStage()
    batcher = Batcher(stage.send, stage="embed", max_size=32, max_latency=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    assert loop.time() - started >= 0.015
    assert stage.batches == [[0, 1, 2]]
    assert all(isinstance(o, Answer) for o in outcomes)


async def test_batches_run_concurrently() -> None:
    stage = FakeStage(delay=0.2)
    batcher = Batcher(stage.send, stage="embed", max_size=2, max_latency=0.001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert len(stage.batches) == 4
    assert loop.time() - started < 0.6  # 4 sequential batches would take 0.8 s


async def test_malformed_answer_fails_only_its_batch() -> None:
    def answer(items: list[Any]) -> BatchResponse:
        if 0 in items:
            return BatchResponse(200, b"[1]")  # wrong length
        return BatchResponse(200, json.dumps(items).encode())

    stage = FakeStage(answer=answer)
    batcher = Batcher(stage.send, stage="embed", max_size=3, max_latency=10.0)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    for outcome in outcomes[:3]:
        assert isinstance(outcome, Failure)
        assert outcome.status == 502
        assert "'embed'" in outcome.message
        assert "1 items for 3 inputs" in outcome.message
    assert [json.loads(o.body) for o in outcomes[3:] if isinstance(o, Answer)] == [3, 4, 5]


async def test_send_failure_is_shared_by_the_batch() -> None:
    stage = FakeStage(answer=lambda items: Failure(504, "slow", "embed", "timeout"))
    batcher = Batcher(stage.send, stage="embed", max_size=2, max_latency=10.0)
    outcomes = await asyncio.gather(batcher.submit("a"), batcher.submit("b"))
    assert [o.status for o in outcomes] == [504, 504]
    assert all(isinstance(o, Failure) and o.batch_size == 2 for o in outcomes)


async def test_held_time_is_split_over_the_batch() -> None:
    stage = FakeStage(delay=0.1)
    batcher = Batcher(stage.send, stage="embed", max_size=4, max_latency=10.0)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    for outcome in outcomes:
        assert 0.02 <= outcome.held_seconds <= 0.05


async def test_requests_collect_while_max_inflight_batches_are_out() -> None:
    stage = FakeStage(delay=0.1)
    batcher = Batcher(stage.send, stage="embed", max_size=32, max_latency=0.001, max_inflight=1)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.02)  # batch [0] is out; the next ones wait for it
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 10)]
    outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=2)
    assert stage.batches == [[0], list(range(1, 10))]
    assert [json.loads(o.body) for o in outcomes if isinstance(o, Answer)] == [
        {"out": i} for i in range(10)
    ]


async def test_a_full_batch_waits_for_a_free_slot_then_goes_at_once() -> None:
    stage = FakeStage(delay=0.05)
    batcher = Batcher(stage.send, stage="embed", max_size=2, max_latency=10.0, max_inflight=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(6))), timeout=2)
    assert stage.batches == [[0, 1], [2, 3], [4, 5]]
    assert loop.time() - started >= 0.14  # one at a time


async def test_a_full_queue_sheds_at_once_with_503_and_retry_after() -> None:
    stage = FakeStage(delay=0.3)
    batcher = Batcher(
        stage.send, stage="embed", max_size=2, max_latency=0.001, max_inflight=1, max_queue=3
    )
    loop = asyncio.get_running_loop()
    first = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
    await asyncio.sleep(0.02)  # [0, 1] is out; three more may wait
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 5)]
    await asyncio.sleep(0)
    started = loop.time()
    shed = await asyncio.gather(*(batcher.submit(i) for i in range(5, 9)))
    assert loop.time() - started < 0.05  # not queued at all
    for outcome in shed:
        assert isinstance(outcome, Failure)
        assert (outcome.status, outcome.outcome, outcome.retry_after) == (503, "overloaded", 1)
        assert "'embed'" in outcome.message and "queue is full" in outcome.message
    outcomes = await asyncio.wait_for(asyncio.gather(*first, *waiting), timeout=3)
    assert all(isinstance(o, Answer) for o in outcomes)
    assert sorted(i for batch in stage.batches for i in batch) == [0, 1, 2, 3, 4]


async def test_a_queued_item_fails_at_its_deadline_and_is_never_sent() -> None:
    stage = FakeStage(delay=0.5)
    batcher = Batcher(
        stage.send, stage="embed", max_size=1, max_latency=0.001, max_inflight=1, timeout=0.1
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(batcher.submit("first", started + 5))
    await asyncio.sleep(0.01)
    late = await batcher.submit("late", loop.time() + 0.1)
    assert 0.08 <= loop.time() - started < 0.3  # at its deadline, not after the slow batch
    assert isinstance(late, Failure) and late.status == 504 and late.outcome == "timeout"
    assert late.message == "stage 'embed' did not answer within 0.1s (it waited in the batch queue)"
    assert isinstance(await first, Answer)
    await asyncio.sleep(0.05)
    assert stage.batches == [["first"]]  # the expired item was not sent


async def test_an_item_in_a_slow_batch_fails_at_its_deadline_alone() -> None:
    stage = FakeStage(delay=0.4)
    batcher = Batcher(stage.send, stage="embed", max_size=2, max_latency=10.0, timeout=0.1)
    loop = asyncio.get_running_loop()
    short = asyncio.ensure_future(batcher.submit("short", loop.time() + 0.1))
    long = asyncio.ensure_future(batcher.submit("long", loop.time() + 5))
    outcome = await short
    assert isinstance(outcome, Failure) and outcome.status == 504
    assert "its batch is still at the stage" in outcome.message
    assert isinstance(await long, Answer)  # the batch went on for the other caller


async def test_a_caller_that_went_away_is_not_sent() -> None:
    stage = FakeStage()
    batcher = Batcher(stage.send, stage="embed", max_size=8, max_latency=0.05)
    gone = asyncio.ensure_future(batcher.submit("gone"))
    await asyncio.sleep(0.01)
    gone.cancel()
    assert isinstance(await batcher.submit("stays"), Answer)
    assert stage.batches == [["stays"]]
    assert batcher.queued() == 0


async def test_an_answer_item_that_cannot_be_json_fails_alone() -> None:
    stage = FakeStage(answer=lambda items: BatchResponse(200, b'["ok", "\\ud800", NaN, 4]'))
    batcher = Batcher(stage.send, stage="embed", max_size=4, max_latency=10.0)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(4))), timeout=2
    )
    assert isinstance(outcomes[0], Answer) and json.loads(outcomes[0].body) == "ok"
    assert isinstance(outcomes[1], Failure) and outcomes[1].status == 502
    assert "not JSON text" in outcomes[1].message
    assert isinstance(outcomes[2], Failure) and outcomes[2].status == 502
    assert isinstance(outcomes[3], Answer) and outcomes[3].body == b"4"


async def test_a_send_that_raises_fails_its_batch_without_hanging() -> None:
    async def broken(items: list[Any]) -> BatchResponse:
        raise RuntimeError("bug")

    batcher = Batcher(broken, stage="embed", max_size=2, max_latency=10.0)
    outcomes = await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 2)
    assert [o.status for o in outcomes] == [502, 502]
