"""The operator's Prometheus metrics (names fixed in DESIGN.md, plus the status figures)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from penstock.api.status import PipelineStatus

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
STAGE_LABELS = ["namespace", "pipeline", "stage"]
STAGE_HOURLY_COST = Gauge(
    "penstock_stage_hourly_cost_usd",
    "Cost of a stage's current replicas per hour, USD (requests x price table, or hourlyRate).",
    [*STAGE_LABELS, "cost_center"],
)
STAGE_RECOMMENDED_REPLICAS = Gauge(
    "penstock_stage_recommended_replicas",
    "Replicas the throughput tuner recommends for a stage (its HPA's minReplicas floor).",
    STAGE_LABELS,
)
STAGE_DESIRED_REPLICAS = Gauge(
    "penstock_stage_desired_replicas",
    "Replicas a stage's Deployment asks for (set by its HPA).",
    STAGE_LABELS,
)
STAGE_READY_REPLICAS = Gauge(
    "penstock_stage_ready_replicas",
    "Ready replicas of a stage's Deployment.",
    STAGE_LABELS,
)
STAGE_UTILIZATION = Gauge(
    "penstock_stage_utilization",
    "Observed request rate over the stage's current capacity (1 = saturated).",
    STAGE_LABELS,
)
PIPELINE_BOTTLENECK = Gauge(
    "penstock_pipeline_bottleneck",
    "1 for the stage the throughput tuner names the pipeline's bottleneck.",
    STAGE_LABELS,
)
# status field of each stage -> its gauge
_STAGE_FIGURES: dict[str, Gauge] = {
    "recommended_replicas": STAGE_RECOMMENDED_REPLICAS,
    "desired_replicas": STAGE_DESIRED_REPLICAS,
    "ready_replicas": STAGE_READY_REPLICAS,
    "utilization": STAGE_UTILIZATION,
}
_PER_PIPELINE = (STAGE_HOURLY_COST, PIPELINE_BOTTLENECK, *_STAGE_FIGURES.values())


def export_status(namespace: str, pipeline: str, cost_center: str, status: PipelineStatus) -> None:
    """Export a valid Pipeline's status figures; series it no longer has are dropped."""
    kept: set[tuple[int, tuple[str, ...]]] = set()

    def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        gauge.labels(*labels).set(value)
        kept.add((id(gauge), labels))

    for item in status.stages:
        labels = (namespace, pipeline, item.name)
        put(STAGE_HOURLY_COST, (*labels, cost_center), float(item.hourly_cost or 0))
        for field, gauge in _STAGE_FIGURES.items():
            value = getattr(item, field)
            if value is not None:
                put(gauge, labels, float(value))
    if status.bottleneck:
        put(PIPELINE_BOTTLENECK, (namespace, pipeline, status.bottleneck), 1)
    forget_pipeline(namespace, pipeline, keep=kept)


def forget_pipeline(
    namespace: str, pipeline: str, keep: set[tuple[int, tuple[str, ...]]] | None = None
) -> None:
    for gauge in _PER_PIPELINE:
        for labels in _series(gauge):
            if labels[:2] == (namespace, pipeline) and (id(gauge), labels) not in (keep or ()):
                gauge.remove(*labels)


def _series(gauge: Gauge) -> list[tuple[str, ...]]:
    # prometheus-client keeps children by label values
    return [tuple(key) for key in list(gauge._metrics)]
