"""The savings estimates and the token usage parser of the gateway (pure parts)."""

from __future__ import annotations

import pytest

from penstock.dataplane.gateway.savings import BatchModel, RunningMean, SavingsEstimator
from penstock.dataplane.gateway.usage import TokenUsage, token_usage


def test_running_mean_is_the_plain_mean_at_first() -> None:
    mean = RunningMean()
    for value in (1.0, 2.0, 3.0):
        mean.add(value)
    assert mean.value == pytest.approx(2.0)


def test_running_mean_follows_a_stage_that_changed() -> None:
    mean = RunningMean()
    for _ in range(5000):
        mean.add(1.0)
    for _ in range(5000):
        mean.add(3.0)
    assert mean.value == pytest.approx(3.0, rel=0.02)


def test_batch_model_needs_two_sizes() -> None:
    model = BatchModel()
    model.add(8, 0.2)
    model.add(8, 0.2)
    assert model.single_item_seconds() is None


def test_batch_model_recovers_fixed_and_per_item_time() -> None:
    model = BatchModel()
    for size in (1, 2, 4, 8, 16, 32):
        model.add(size, 0.05 + 0.01 * size)  # 50 ms per call, 10 ms per item
    assert model.single_item_seconds() == pytest.approx(0.06)


def test_batched_items_save_their_share_of_the_fixed_cost() -> None:
    estimator = SavingsEstimator()
    for size in (1, 4, 8):
        estimator.batch_done(size, 0.05 + 0.01 * size)
    # An item of a batch of 8 held (0.05 + 0.08) / 8 s; alone it takes 0.06 s.
    saving = estimator.batched((0.05 + 0.08) / 8)
    assert saving is not None and saving.reason == "batching"
    assert saving.seconds == pytest.approx(0.06 - 0.13 / 8)
    # Eight of them save 7 x the fixed 50 ms.
    assert 8 * saving.seconds == pytest.approx(7 * 0.05)
    assert estimator.batched(0.07) is None  # slower than alone: nothing saved


def test_hits_save_nothing_before_the_stage_answered() -> None:
    estimator = SavingsEstimator()
    assert estimator.hit("cache") is None
    estimator.answered(0.2)
    estimator.answered(0.4)
    saving = estimator.hit("semantic")
    assert saving is not None and saving.seconds == pytest.approx(0.3)
    assert estimator.coalesced(0.0) is None


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ([("X-Penstock-Usage", "input_tokens=3, output_tokens=4")], b"", TokenUsage(3, 4)),
        ([("x-penstock-usage", "gen_ai.usage.output_tokens=9")], b"", TokenUsage(0, 9)),
        ([], b'{"usage": {"input_tokens": 1, "output_tokens": 2}}', TokenUsage(1, 2)),
        ([], b'{"usage": {"prompt_tokens": 5, "completion_tokens": 6}}', TokenUsage(5, 6)),
        ([], b'{"text": "no usage here"}', None),
        ([], b'{"usage": {"input_tokens": -1}}', None),
        ([], b'{"usage": {"input_tokens": true}}', None),
        ([], b'{"usage": {"input_tokens": 1e12}}', None),
        ([], b'["usage"]', None),
        ([], b'{"usage": 3}', None),
        ([], b'{"usage": {"input_tokens": 0}}', None),
        ([], b'not json "usage"', None),
        ([("X-Penstock-Usage", "input_tokens=99999999999")], b"", None),
        ([("X-Penstock-Usage", "garbage")], b"", None),
    ],
)
def test_token_usage(
    headers: list[tuple[str, str]], body: bytes, expected: TokenUsage | None
) -> None:
    assert token_usage(headers, body) == expected


def test_a_deeply_nested_answer_is_no_usage() -> None:
    assert token_usage([], b'{"usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") is None


def test_a_saving_is_priced_at_the_replica_rate() -> None:
    estimator = SavingsEstimator(hourly_cost_usd=3.6)  # 0.001 USD per replica-second
    estimator.answered(0.5)
    saving = estimator.hit("cache")
    assert saving is not None and saving.usd == pytest.approx(0.0005)
