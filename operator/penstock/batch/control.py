"""How many items a batch run keeps in flight: found by measuring, not configured.

Every window (enough completions, or a few seconds) the controller compares the window's
throughput with the best it has seen:

- shed load (429, 503) or failures of the pipeline (502, 504, lost calls) above 5% of the
  window: back off multiplicatively (x0.7) and remember the ceiling, so it does not climb
  straight back into it (an item's own error, a 400 say, says nothing of the load);
- p95 latency over the bound: step down (the bound is --max-p95 or, by default, 4x the p95 of
  the first window, the pipeline's unloaded latency, at least 1 s);
- throughput up by more than 5% on the best: climb (x1.5, at least +1), up to the ceiling;
- no gain with more in flight than at the best (past the knee, more in flight only queues):
  return to the best;
- otherwise (a plateau at the best) hold, and probe one step higher now and then, since the
  pipeline's capacity can grow (its HPAs add replicas).

Pure (the clock is a parameter), so tests drive it with synthetic completions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from penstock.dev.analyze import percentile


@dataclass
class Window:
    started: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    overloaded: int = 0

    @property
    def completions(self) -> int:
        return len(self.latencies) + self.errors + self.overloaded


@dataclass(frozen=True)
class Decision:
    limit: int
    reason: str
    throughput: float
    p95: float


class ConcurrencyController:
    def __init__(
        self,
        now: float,
        *,
        start: int = 4,
        low: int = 1,
        high: int = 256,
        max_p95_seconds: float | None = None,
        min_window_seconds: float = 1.0,
        max_window_seconds: float = 5.0,
        probe_every: int = 5,
    ) -> None:
        if not 1 <= low <= high:
            raise ValueError(f"concurrency bounds {low}..{high}: need 1 <= low <= high")
        self.low, self.high = low, high
        self.limit = min(high, max(low, start))
        self.fixed = low == high
        self.max_p95 = max_p95_seconds
        self.min_window = min_window_seconds
        self.max_window = max_window_seconds
        self.probe_every = probe_every
        self.ceiling = high
        self.best_throughput = 0.0
        self.best_limit = self.limit
        self.peak = self.limit
        self._plateau = 0
        self._window = Window(now)
        self.history: list[Decision] = []

    def record(
        self, latency_seconds: float, *, ok: bool, overloaded: bool = False, failed: bool = False
    ) -> None:
        """One answer: ok, shed (429/503), a failure of the pipeline (502/504, a lost call),
        or none of these (an item's own error: it says nothing of the load)."""
        if overloaded:
            self._window.overloaded += 1
        elif failed:
            self._window.errors += 1
        elif ok:
            self._window.latencies.append(latency_seconds)

    def tick(self, now: float) -> Decision | None:
        """Close the window when it is long enough; the new limit, or None (window open)."""
        window = self._window
        elapsed = now - window.started
        enough = window.completions >= max(16, self.limit)
        if elapsed < self.min_window or (not enough and elapsed < self.max_window):
            return None
        self._window = Window(now)
        if window.completions == 0:
            return None
        throughput = len(window.latencies) / elapsed
        p95 = percentile(window.latencies, 0.95)
        if self.max_p95 is None and window.latencies:
            self.max_p95 = max(1.0, 4 * p95)
        decision = self._decide(window, throughput, p95)
        self.limit = min(self.high, max(self.low, decision.limit))
        self.peak = max(self.peak, self.limit)
        self.history.append(decision)
        return decision

    def _decide(self, window: Window, throughput: float, p95: float) -> Decision:
        limit = self.limit
        if self.fixed:
            return Decision(limit, "fixed", throughput, p95)
        if window.overloaded or window.errors > 0.05 * window.completions:
            self.ceiling = max(self.low, limit - 1)
            self.best_throughput *= 0.8  # the pipeline changed: measure the best again
            return Decision(math.floor(limit * 0.7), "overloaded", throughput, p95)
        if self.max_p95 is not None and p95 > self.max_p95:
            self.ceiling = max(self.low, limit - 1)
            return Decision(limit - max(1, limit // 4), "p95 over bound", throughput, p95)
        if throughput > self.best_throughput * 1.05:
            self.best_throughput, self.best_limit = throughput, limit
            self._plateau = 0
            climb = min(self.ceiling, max(limit + 1, math.ceil(limit * 1.5)))
            return Decision(max(limit, climb), "throughput rising", throughput, p95)
        if limit > self.best_limit:
            # More in flight did not pay (a climb or a probe past the knee): only queues.
            return Decision(self.best_limit, "no gain: back to the best", throughput, p95)
        self.best_throughput = max(self.best_throughput, throughput)
        self._plateau += 1
        if self._plateau >= self.probe_every:
            self._plateau = 0
            self.ceiling = self.high
            return Decision(limit + max(1, limit // 4), "probing", throughput, p95)
        return Decision(limit, "plateau", throughput, p95)
