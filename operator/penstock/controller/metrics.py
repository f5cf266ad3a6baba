"""The operator's Prometheus metrics (names fixed in DESIGN.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
STAGE_HOURLY_COST = Gauge(
    "penstock_stage_hourly_cost_usd",
    "Cost of a stage's current replicas per hour, USD (requests x price table, or hourlyRate).",
    ["namespace", "pipeline", "stage", "cost_center"],
)


def set_stage_costs(
    namespace: str, pipeline: str, cost_center: str, costs: dict[str, float]
) -> None:
    """Export the pipeline's per-stage hourly cost; stages no longer in the spec are dropped."""
    forget_pipeline(namespace, pipeline, keep=set(costs))
    for stage, cost in costs.items():
        STAGE_HOURLY_COST.labels(namespace, pipeline, stage, cost_center).set(cost)


def forget_pipeline(namespace: str, pipeline: str, keep: set[str] | None = None) -> None:
    for labels in list(_series(STAGE_HOURLY_COST)):
        ns, name, stage, _ = labels
        if ns == namespace and name == pipeline and (keep is None or stage not in keep):
            STAGE_HOURLY_COST.remove(*labels)


def _series(gauge: Gauge) -> list[tuple[str, ...]]:
    return [
        tuple(key) for key in gauge._metrics
    ]  # prometheus-client keeps children by label values
