"""Runs the throughput tuner for a Pipeline during its reconcile and reports how it went.

Missing or broken metrics never lower anything: the HPAs keep their static bounds (or the last
recommendation) and the MetricsAvailable condition says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.status import PipelineStatus, StageStatus
from penstock.controller.conditions import Verdict
from penstock.controller.prometheus import PrometheusClient, PrometheusError, observe_pipeline
from penstock.controller.tuner import PipelineGraph, PipelineResult, Tuner
from penstock.render.meta import stage_object_name


@dataclass(frozen=True)
class Tuning:
    result: PipelineResult | None
    metrics: Verdict
    """The MetricsAvailable condition."""

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
        self._verdict: dict[str, Verdict] = {}

    def forget(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self.tuner.forget(key)
        self._ticked.pop(key, None)
        self._verdict.pop(key, None)

    def run(
        self,
        namespace: str,
        name: str,
        spec: PipelineSpec,
        deployments: Mapping[str, Any],
        previous_stages: Sequence[StageStatus],
    ) -> Tuning:
        key = f"{namespace}/{name}"
        if self.client is None:
            return Tuning(
                None,
                Verdict(
                    "MetricsAvailable",
                    False,
                    "NotConfigured",
                    "no Prometheus URL: HPAs keep their static targets",
                ),
            )
        now = self.clock()
        last = self.tuner.last(key)
        if last is not None and now - self._ticked.get(key, 0.0) < self.interval:
            return Tuning(last, self._verdict[key])
        self._ticked[key] = now
        stages = [stage.name for stage in spec.stages]
        try:
            observed = observe_pipeline(
                self.client, namespace, name, stages, _ready_replicas(name, spec, deployments)
            )
        except PrometheusError as error:
            verdict = Verdict(
                "MetricsAvailable", False, "QueryFailed", f"{error}; HPAs keep their last targets"
            )
            self._verdict[key] = verdict
            return Tuning(last, verdict)
        previous = {item.name: item.recommended_replicas for item in previous_stages}
        result = self.tuner.tick(key, PipelineGraph.from_spec(spec), observed, previous)
        missing = [stage.name for stage in result.stages if stage.no_data]
        if missing:
            verdict = Verdict(
                "MetricsAvailable",
                False,
                "NoData",
                f"no gateway metrics yet for: {', '.join(missing)}",
            )
        else:
            verdict = Verdict(
                "MetricsAvailable", True, "MetricsFound", "every stage reports metrics"
            )
        self._verdict[key] = verdict
        return Tuning(result, verdict)


def _rounded(value: float | None, digits: int) -> float | None:
    # Rounded so that noise in the last digits does not rewrite the status every tick.
    return None if value is None else round(value, digits)


def add_tuner_figures(status: PipelineStatus, result: PipelineResult | None) -> None:
    """Add the tuner's figures (per stage, bottleneck, slowest chain) to a computed status."""
    if result is None:
        return
    for item in status.stages:
        stage = result.stage(item.name)
        if stage is None:
            continue
        item.observed_rps = _rounded(stage.observed_rps, 2)
        item.capacity_per_replica = _rounded(stage.capacity_per_replica, 2)
        item.utilization = _rounded(stage.utilization, 3)
        item.recommended_replicas = stage.recommended_replicas
    status.bottleneck = result.bottleneck or None
    status.critical_path = list(result.critical_path) or None
