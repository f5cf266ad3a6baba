"""The HorizontalPodAutoscaler (autoscaling/v2) of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.render.meta import PipelineRef, labels, metadata, stage_object_name

THROUGHPUT_METRIC = "penstock_stage_requests_per_second"
SCALE_DOWN_WINDOW_SECONDS = 300


def _metrics(stage: Stage) -> list[dict[str, Any]]:
    scaling = stage.scaling_or_default
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": max(1, round(scaling.target_utilization * 100)),
                },
            },
        }
    ]
    if scaling.target_throughput_per_replica is not None:
        target = scaling.target_throughput_per_replica * scaling.target_utilization
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": THROUGHPUT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": f"{round(target * 1000)}m"},
                },
            }
        )
    return metrics


def stage_hpa(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, floor: int | None = None
) -> dict[str, Any]:
    """floor: the throughput tuner's recommendation, raising minReplicas within the bounds."""
    scaling = stage.scaling_or_default
    min_replicas = scaling.min_replicas
    if floor is not None:
        min_replicas = min(max(min_replicas, floor), scaling.effective_max_replicas)
    name = stage_object_name(ref.name, stage.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(ref, name, labels(ref.name, spec, stage.name, stage.name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": scaling.effective_max_replicas,
            "metrics": _metrics(stage),
            "behavior": {
                # Scale down only after a stable window, so a short dip does not drop capacity.
                "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_SECONDS},
            },
        },
    }
