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


def rolled_out(deployment: dict[str, Any] | None) -> bool:
    return _deployment_state(deployment)[2]


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


# Waiting reasons that do not clear by themselves: the pod needs a change to start.
_BLOCKED_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def _terminated_failure(status: dict[str, Any]) -> dict[str, Any] | None:
    """The failed termination of a container status: current, or the last before a restart."""
    for key in ("state", "lastState"):
        terminated = (status.get(key) or {}).get("terminated")
        if terminated and int(terminated.get("exitCode", 0)) != 0:
            return dict(terminated)
    return None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pod_problem(pods: list[dict[str, Any]]) -> str | None:
    """Why a stage's pods cannot start, read from the kubelet's container statuses, or None.

    A failed init container (the model preload) is named with its exit code and the
    termination message (its last log lines: terminationMessagePolicy FallbackToLogsOnError).
    """
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name", ""))):
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for kind, key in (
            ("init container", "initContainerStatuses"),
            ("container", "containerStatuses"),
        ):
            for item in status.get(key) or []:
                name = item.get("name", "?")
                waiting = (item.get("state") or {}).get("waiting") or {}
                reason = str(waiting.get("reason", ""))
                if reason in _BLOCKED_REASONS:
                    return _short(
                        f"{kind} {name}: {reason}: {waiting.get('message', '')}".rstrip(": ")
                    )
                failed = _terminated_failure(item)
                if failed and (kind == "init container" or reason == "CrashLoopBackOff"):
                    detail = failed.get("message") or failed.get("reason") or "no message"
                    return _short(f"{kind} {name} failed (exit {failed.get('exitCode')}): {detail}")
    return None


def stage_statuses(
    pipeline: str,
    spec: PipelineSpec,
    deployments: dict[str, dict[str, Any]],
    prices: PriceTable,
    pods: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[str], Decimal]:
    """Per-stage status, names of stages not ready, stuck messages, total hourly cost.

    pods: the pods of the stages that are not rolled out, by stage name (see pod_problem).
    """
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
            problem = pod_problem((pods or {}).get(stage.name, []))
            if problem and not stuck_reason:
                stuck_reason = problem
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
    pods: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    assert result.spec is not None
    spec = result.spec
    stages, not_ready, stuck, total = stage_statuses(name, spec, deployments, prices, pods)
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
