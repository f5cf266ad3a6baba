"""Pipeline status from the observed children: per-stage replicas, readiness, cost, conditions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable, replica_hourly_cost, usd
from penstock.api.validation import Result
from penstock.controller.conditions import condition
from penstock.render.meta import PipelineRef, stage_object_name
from penstock.render.router import router_name, router_url


def _deployment_state(deployment: dict[str, Any] | None) -> tuple[int, int, bool, str | None]:
    """(desired, ready, rolled out, stuck reason) of a Deployment."""
    if deployment is None:
        return 0, 0, False, None
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    rolled_out = current and desired > 0 and ready >= desired and updated >= desired
    stuck = None
    for item in status.get("conditions", []):
        if item.get("type") == "Progressing" and item.get("reason") == "ProgressDeadlineExceeded":
            stuck = item.get("message", "progress deadline exceeded")
    return desired, ready, rolled_out, stuck


def stage_statuses(
    pipeline: str,
    spec: PipelineSpec,
    deployments: dict[str, dict[str, Any]],
    prices: PriceTable,
) -> tuple[list[dict[str, Any]], list[str], list[str], Decimal]:
    """Per-stage status, names of stages not ready, stuck messages, total hourly cost."""
    stages, not_ready, stuck = [], [], []
    total = Decimal(0)
    for stage in spec.stages:
        deployment = deployments.get(stage_object_name(pipeline, stage.name))
        desired, ready, rolled_out, stuck_reason = _deployment_state(deployment)
        # A new Deployment starts at one replica until the HPA lifts it to minReplicas:
        # the stage is not ready before its minimum capacity serves.
        floor = stage.scaling_or_default.min_replicas
        if deployment is not None and desired < floor:
            desired, rolled_out = floor, False
        cost = replica_hourly_cost(stage, prices) * max(desired, 0)
        total += cost
        stages.append(
            {
                "name": stage.name,
                "desiredReplicas": desired,
                "readyReplicas": ready,
                "hourlyCost": usd(cost),
            }
        )
        if not rolled_out:
            not_ready.append(stage.name)
        if stuck_reason:
            stuck.append(f"{stage.name}: {stuck_reason}")
    router = deployments.get(router_name(pipeline))
    _, _, router_rolled_out, router_stuck = _deployment_state(router)
    if not router_rolled_out:
        not_ready.append("router")
    if router_stuck:
        stuck.append(f"router: {router_stuck}")
    return stages, not_ready, stuck, total


def valid_status(
    name: str,
    namespace: str,
    generation: int,
    result: Result,
    deployments: dict[str, dict[str, Any]],
    prices: PriceTable,
) -> dict[str, Any]:
    assert result.spec is not None
    spec = result.spec
    stages, not_ready, stuck, total = stage_statuses(name, spec, deployments, prices)
    ready = not not_ready
    waiting = ", ".join(not_ready)
    conditions = [
        condition(
            "Ready",
            ready,
            "AllStagesReady" if ready else "StagesNotReady",
            "every stage is serving" if ready else f"waiting for stages: {waiting}",
            generation,
        ),
        condition("Valid", True, "SpecValid", "the spec is valid", generation),
        condition(
            "Progressing",
            not ready,
            "RollingOut" if not ready else "RolloutComplete",
            f"rolling out: {waiting}" if not ready else "all stages rolled out",
            generation,
        ),
        condition(
            "Degraded",
            bool(stuck),
            "StageRolloutStuck" if stuck else "AsExpected",
            "; ".join(stuck) if stuck else "no stage is stuck",
            generation,
        ),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "stages": stages,
        "stagesReady": f"{len(spec.stages) - len([n for n in not_ready if n != 'router'])}"
        f"/{len(spec.stages)}",
        "hourlyCost": usd(total),
        "routerUrl": router_url(PipelineRef(name, namespace)),
    }
    if result.warnings:
        status["warnings"] = [str(problem) for problem in result.warnings]
    return status


def invalid_status(generation: int, result: Result, previous: dict[str, Any]) -> dict[str, Any]:
    """Valid=False with the message; children and their figures stay as they were."""
    message = result.summary()
    status = {
        key: value
        for key, value in previous.items()
        if key in ("stages", "stagesReady", "hourlyCost", "bottleneck", "criticalPath", "routerUrl")
    }
    status["observedGeneration"] = generation
    status["conditions"] = [
        condition("Ready", False, "InvalidSpec", message, generation),
        condition("Valid", False, "InvalidSpec", message, generation),
        condition(
            "Progressing", False, "InvalidSpec", "not applied: the spec is invalid", generation
        ),
        condition(
            "Degraded", False, "AsExpected", "children of the last valid spec are kept", generation
        ),
    ]
    return status
