"""The HorizontalPodAutoscaler (autoscaling/v2) of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.api.pipeline import Workload
from penstock.contract.wire import STAGE_REQUESTS_PER_SECOND
from penstock.render.meta import PipelineRef, metadata, stage_object_name, workload_labels
from penstock.render.workload import autoscaler


def _throughput_metric(stage: Stage) -> list[dict[str, Any]]:
    """The Pods metric of the declared throughput (used with a custom-metrics adapter)."""
    scaling = stage.scaling_or_default
    if scaling.target_throughput_per_replica is None:
        return []
    target = scaling.target_throughput_per_replica * scaling.target_utilization
    return [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": STAGE_REQUESTS_PER_SECOND},
                "target": {"type": "AverageValue", "averageValue": f"{round(target * 1000)}m"},
            },
        }
    ]


def stage_hpa(
    ref: PipelineRef, spec: PipelineSpec, workload: Workload, floor: int | None = None
) -> dict[str, Any]:
    """floor: the throughput tuner's recommendation, raising minReplicas within the bounds."""
    stage = workload.stage
    scaling = stage.scaling_or_default
    min_replicas = scaling.min_replicas
    if floor is not None:
        min_replicas = min(max(min_replicas, floor), scaling.effective_max_replicas)
    name = stage_object_name(ref.name, workload.component)
    return autoscaler(
        metadata(ref, name, workload_labels(ref.name, spec, workload)),
        scaling,
        min_replicas,
        _throughput_metric(stage),
    )
