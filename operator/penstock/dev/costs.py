"""What a request cost, per stage, from its profile: the gateway's attribution, offline.

A stage call holds one replica for its duration, so it costs the replica's hourly price (the
Pipeline's resources at the operator's price table, or the stage's ``cost.hourlyRate``) per
second held; a cache hit holds no replica and costs 0. This is the same rule the gateway applies
live (penstock.dataplane.gateway.telemetry.request_cost_usd), so the figures agree with the
``penstock_stage_cost_usd_total`` metric. Without the Pipeline the prices are unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable, replica_hourly_cost
from penstock.contract.profile import Profile


def replica_rates(spec: PipelineSpec | None, prices: PriceTable | None = None) -> dict[str, float]:
    """USD per second one replica of each stage costs ({} without a Pipeline)."""
    if spec is None:
        return {}
    table = prices or PriceTable()
    return {stage.name: float(replica_hourly_cost(stage, table)) / 3600.0 for stage in spec.stages}


def stage_costs(profile: Profile, rates: Mapping[str, float]) -> dict[str, float]:
    """USD each stage of one request cost (stages without a known rate are left out)."""
    return {
        name: 0.0 if timing.cache == "hit" else rates[name] * timing.duration_ms / 1000.0
        for name, timing in profile.stages.items()
        if name in rates
    }


def request_cost(profile: Profile, rates: Mapping[str, float]) -> float | None:
    """USD one request cost over all its stages; None when no stage has a known rate."""
    costs = stage_costs(profile, rates)
    return sum(costs.values()) if costs else None
