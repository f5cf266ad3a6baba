"""Runs the throughput tuner for a Pipeline during its reconcile and reports how it went.

Missing or broken metrics never lower anything: the HPAs keep their static bounds (or the last
recommendation) and the MetricsAvailable condition says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from penstock.api import PipelineSpec
from penstock.controller.conditions import condition
from penstock.controller.prometheus import PrometheusClient, PrometheusError, observe_pipeline
from penstock.controller.tuner import PipelineGraph, PipelineResult, Tuner
from penstock.render.meta import stage_object_name


@dataclass(frozen=True)
class Tuning:
    result: PipelineResult | None
    metrics_condition: dict[str, Any]

    @property
    def floors(self) -> dict[str, int]:
        if self.result is None:
            return {}
        return {
            stage.name: stage.recommended_replicas
            for stage in self.result.stages
            if stage.recommended_replicas is not None
        }


def _ready_replicas(
    pipeline: str, spec: PipelineSpec, deployments: Mapping[str, Any]
) -> dict[str, int]:
    ready = {}
    for stage in spec.stages:
        deployment = deployments.get(stage_object_name(pipeline, stage.name))
        if deployment is not None:
            ready[stage.name] = int(deployment.get("status", {}).get("readyReplicas", 0))
    return ready


class ThroughputTuning:
    def __init__(
        self,
        client: PrometheusClient | None,
        interval_seconds: float,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.interval = interval_seconds
        self.tuner = Tuner(stable_window_seconds=window_seconds, clock=clock)
        self.clock = clock
        self._ticked: dict[str, float] = {}
        self._condition: dict[str, dict[str, Any]] = {}

    def forget(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self.tuner.forget(key)
        self._ticked.pop(key, None)
        self._condition.pop(key, None)

    def run(
        self,
        namespace: str,
        name: str,
        generation: int,
        spec: PipelineSpec,
        deployments: Mapping[str, Any],
        previous_stages: list[dict[str, Any]],
    ) -> Tuning:
        key = f"{namespace}/{name}"
        if self.client is None:
            return Tuning(
                None,
                condition(
                    "MetricsAvailable",
                    False,
                    "NotConfigured",
                    "no Prometheus URL: HPAs keep their static targets",
                    generation,
                ),
            )
        now = self.clock()
        last = self.tuner.last(key)
        if last is not None and now - self._ticked.get(key, 0.0) < self.interval:
            return Tuning(last, {**self._condition[key], "observedGeneration": generation})
        self._ticked[key] = now
        stages = [stage.name for stage in spec.stages]
        try:
            observed = observe_pipeline(
                self.client, namespace, name, stages, _ready_replicas(name, spec, deployments)
            )
        except PrometheusError as error:
            cond = condition(
                "MetricsAvailable",
                False,
                "QueryFailed",
                f"{error}; HPAs keep their last targets",
                generation,
            )
            self._condition[key] = cond
            return Tuning(last, cond)
        previous = {
            item["name"]: item.get("recommendedReplicas")
            for item in previous_stages
            if "name" in item
        }
        result = self.tuner.tick(key, PipelineGraph.from_spec(spec), observed, previous)
        missing = [stage.name for stage in result.stages if stage.no_data]
        if missing:
            cond = condition(
                "MetricsAvailable",
                False,
                "NoData",
                f"no gateway metrics yet for: {', '.join(missing)}",
                generation,
            )
        else:
            cond = condition(
                "MetricsAvailable", True, "MetricsFound", "every stage reports metrics", generation
            )
        self._condition[key] = cond
        return Tuning(result, cond)


def _rounded(value: float | None, digits: int) -> float | None:
    # Rounded so that noise in the last digits does not rewrite the status every tick.
    return None if value is None else round(value, digits)


def apply_to_status(status: dict[str, Any], tuning: Tuning) -> None:
    """Add the tuner's figures and the MetricsAvailable condition to a computed status."""
    status["conditions"].append(tuning.metrics_condition)
    if tuning.result is None:
        return
    for item in status["stages"]:
        stage = tuning.result.stage(item["name"])
        if stage is None:
            continue
        figures = {
            "observedRps": _rounded(stage.observed_rps, 2),
            "capacityPerReplica": _rounded(stage.capacity_per_replica, 2),
            "utilization": _rounded(stage.utilization, 3),
            "recommendedReplicas": stage.recommended_replicas,
        }
        item.update({k: v for k, v in figures.items() if v is not None})
    if tuning.result.bottleneck:
        status["bottleneck"] = tuning.result.bottleneck
    if tuning.result.critical_path:
        status["criticalPath"] = list(tuning.result.critical_path)
