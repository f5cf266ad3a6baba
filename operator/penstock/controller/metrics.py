"""The operator's Prometheus metrics (names fixed in DESIGN.md)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILE_TOTAL = Counter(
    "penstock_reconcile_total",
    "Pipeline reconciles by result (changed, unchanged, error).",
    ["result"],
)
RECONCILE_DURATION = Histogram(
    "penstock_reconcile_duration_seconds",
    "Time one Pipeline reconcile took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
