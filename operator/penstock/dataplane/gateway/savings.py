"""What the gateway saved: stage work that requests did not need, in replica-seconds and USD.

Saved seconds are seconds of a stage replica's time that were not spent, priced like the cost
(``hourly cost / 3600`` per second, penstock.dataplane.gateway.telemetry.request_cost_usd), so
``saved_usd / (cost_usd + saved_usd)`` is the share of the stage's bill the optimizations took off.
By reason:

- ``cache``: an exact hit in any tier skipped a stage call; it saved what a call holds a replica
  on average (the running mean of the stage's answers, an item's share for a batched stage);
- ``semantic``: the same for a semantic hit (a hit that is also shadow-verified saves nothing:
  the stage is called anyway);
- ``coalesced``: a request that took another identical in-flight request's answer saved that
  call's time (N callers, one call: N-1 calls saved);
- ``batching``: an item sent in a batch of n that took d seconds saved ``u - d/n``, where u is
  what one item alone takes: the batch duration model ``d = a + b n`` fitted (least squares,
  exponentially forgotten) over the batches seen, evaluated at n = 1. Until batches of two
  different sizes were seen, u is unknown and nothing is counted.

Estimates stay at zero until the stage answered: a saving is never invented.
"""

from __future__ import annotations

from dataclasses import dataclass

from penstock.dataplane.gateway.telemetry import request_cost_usd

# Each new observation weighs as much as the last ~1000 together: the means follow a stage that
# slows down or speeds up without being thrown by one slow call.
_MEMORY = 1000.0


class RunningMean:
    """The mean of the last ~1000 values (a plain mean until then)."""

    __slots__ = ("count", "value")

    def __init__(self) -> None:
        self.count = 0
        self.value = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.value += (value - self.value) / min(self.count, _MEMORY)


class BatchModel:
    """``seconds = a + b * size`` by weighted least squares, older batches forgotten."""

    __slots__ = ("_n", "_x", "_xx", "_xy", "_y")

    def __init__(self) -> None:
        self._n = self._x = self._y = self._xx = self._xy = 0.0

    def add(self, size: int, seconds: float) -> None:
        keep = 1.0 - 1.0 / _MEMORY
        self._n = self._n * keep + 1.0
        self._x = self._x * keep + size
        self._y = self._y * keep + seconds
        self._xx = self._xx * keep + size * size
        self._xy = self._xy * keep + size * seconds

    def single_item_seconds(self) -> float | None:
        """What one item alone takes (the fit at size 1), or None before two sizes were seen."""
        spread = self._n * self._xx - self._x * self._x
        if self._n < 1.5 or spread <= 1e-9 * max(self._n * self._xx, 1.0):
            return None
        slope = (self._n * self._xy - self._x * self._y) / spread
        intercept = (self._y - slope * self._x) / self._n
        return max(0.0, intercept + slope)


@dataclass(frozen=True)
class Saving:
    reason: str
    seconds: float
    usd: float
    """``seconds`` priced like the cost (telemetry.request_cost_usd)."""


class SavingsEstimator:
    """Per gateway: the running figures a saving is computed from."""

    def __init__(self, hourly_cost_usd: float = 0.0) -> None:
        self.hourly_cost_usd = hourly_cost_usd
        self.call = RunningMean()
        """Seconds one answer held a replica (for an item of a batch: its share)."""
        self.batches = BatchModel()

    def answered(self, held_seconds: float) -> None:
        """A stage answer (2xx) that a call produced."""
        self.call.add(held_seconds)

    def batch_done(self, size: int, seconds: float) -> None:
        self.batches.add(size, seconds)

    def hit(self, reason: str) -> Saving | None:
        """A cache (or semantic) hit: one call's mean time saved."""
        if not self.call.count:
            return None
        return self._saving(reason, self.call.value)

    def coalesced(self, held_seconds: float) -> Saving | None:
        return self._saving("coalesced", held_seconds) if held_seconds > 0 else None

    def batched(self, held_seconds: float) -> Saving | None:
        """An item whose share of its batch was ``held_seconds``."""
        alone = self.batches.single_item_seconds()
        if alone is None or alone <= held_seconds:
            return None
        return self._saving("batching", alone - held_seconds)

    def _saving(self, reason: str, seconds: float) -> Saving:
        return Saving(reason, seconds, request_cost_usd(self.hourly_cost_usd, seconds))
