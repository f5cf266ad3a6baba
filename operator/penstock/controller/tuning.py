"""Runs the throughput tuner for a Pipeline during its reconcile and reports how it went.

Missing or broken metrics never lower anything: the HPAs keep their static bounds (or the last
recommendation) and the MetricsAvailable condition says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.cost import usd
from penstock.api.status import (
    PipelineStatus,
    SavingReason,
    Savings,
    SavingsByReason,
    StageStatus,
)
from penstock.controller.conditions import Verdict
from penstock.controller.prometheus import (
    Efficiency,
    PrometheusClient,
    PrometheusError,
    Saved,
    observe_efficiency,
    observe_pipeline,
)
from penstock.controller.tuner import PipelineGraph, PipelineResult, Tuner
from penstock.render.meta import stage_object_name

# Savings and unit costs are read over a longer window than the tuner's: figures for people, not
# a control input, so steadier is better.
EFFICIENCY_WINDOW = "15m"
REASONS: tuple[SavingReason, ...] = ("cache", "semantic", "coalesced", "batching")


@dataclass(frozen=True)
class Tuning:
    result: PipelineResult | None
    metrics: Verdict
    """The MetricsAvailable condition."""
    efficiency: Efficiency = field(default_factory=Efficiency)

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
    ready: dict[str, int] = {}
    for workload in spec.workloads():  # a stage with variants: all of them together
        deployment = deployments.get(stage_object_name(pipeline, workload.component))
        if deployment is not None:
            replicas = int(deployment.get("status", {}).get("readyReplicas", 0))
            ready[workload.stage.name] = ready.get(workload.stage.name, 0) + replicas
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
        self._efficiency: dict[str, Efficiency] = {}

    def forget(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self.tuner.forget(key)
        self._ticked.pop(key, None)
        self._verdict.pop(key, None)
        self._efficiency.pop(key, None)

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
            return Tuning(last, self._verdict[key], self._efficiency.get(key, Efficiency()))
        self._ticked[key] = now
        stages = [stage.name for stage in spec.stages]
        try:
            observed = observe_pipeline(
                self.client, namespace, name, stages, _ready_replicas(name, spec, deployments)
            )
            efficiency = observe_efficiency(
                self.client,
                namespace,
                name,
                EFFICIENCY_WINDOW,
                variants=any(stage.variants for stage in spec.stages),
            )
        except PrometheusError as error:
            verdict = Verdict(
                "MetricsAvailable", False, "QueryFailed", f"{error}; HPAs keep their last targets"
            )
            self._verdict[key] = verdict
            return Tuning(last, verdict, self._efficiency.get(key, Efficiency()))
        self._efficiency[key] = efficiency
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
        return Tuning(result, verdict, efficiency)


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


def _usd_small(amount: float | None) -> str | None:
    # Per-request costs are micro-dollars: three significant digits, not four decimals.
    return None if amount is None else f"{amount:.3g}"


def add_efficiency(status: PipelineStatus, efficiency: Efficiency) -> None:
    """Savings per hour, per stage and reason; cost per request and per 1M tokens per stage."""
    stages = {item.name: item for item in status.stages}
    for name, unit in efficiency.unit_costs:
        if name in stages:
            stages[name].cost_per_request = _usd_small(unit.per_request)
            stages[name].cost_per_million_tokens = _usd_small(unit.per_million_tokens)
    for figures in efficiency.variants:
        stage = stages.get(figures.stage)
        variant = (
            next((v for v in stage.variants or () if v.name == figures.variant), None)
            if stage
            else None
        )
        if variant is None:  # a variant the spec no longer has
            continue
        variant.served_share = _rounded(figures.served_share, 3)
        variant.escalated_share = _rounded(figures.escalated_share, 3)
        variant.cost_per_request = _usd_small(figures.cost_per_request)
    add_savings(status, efficiency.saved)


def add_savings(status: PipelineStatus, savings: Sequence[Saved]) -> None:
    """Per stage and per reason, what the gateways saved per hour (nothing without figures)."""
    stages = {item.name: item for item in status.stages}
    by_stage: dict[str, float] = {}
    by_reason: dict[str, list[float]] = {}
    for saved in savings:
        if saved.stage not in stages:  # a stage the spec no longer has
            continue
        by_stage[saved.stage] = by_stage.get(saved.stage, 0.0) + saved.usd_per_hour
        pair = by_reason.setdefault(saved.reason, [0.0, 0.0])
        pair[0] += saved.seconds_per_hour
        pair[1] += saved.usd_per_hour
    if not by_reason:
        return
    for name, amount in by_stage.items():
        stages[name].saved_hourly_cost = usd(Decimal(repr(amount)))
    known = [reason for reason in REASONS if reason in by_reason]
    status.savings = Savings(
        usd_per_hour=usd(Decimal(repr(sum(pair[1] for pair in by_reason.values())))),
        stage_seconds_per_hour=round(sum(pair[0] for pair in by_reason.values()), 1),
        by_reason=[
            SavingsByReason(
                reason=reason,
                usd_per_hour=usd(Decimal(repr(by_reason[reason][1]))),
                stage_seconds_per_hour=round(by_reason[reason][0], 1),
            )
            for reason in known
        ],
    )
