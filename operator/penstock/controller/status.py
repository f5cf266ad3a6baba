"""Pipeline status from the observed children: per-stage replicas, readiness, cost, conditions.

Pure: the observed objects, the previous status and the time in; the typed status out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable, replica_hourly_cost, usd
from penstock.api.status import PipelineStatus, StageStatus, VariantStatus
from penstock.api.validation import Result
from penstock.controller.conditions import Verdict, set_conditions
from penstock.controller.tuning import Tuning, add_efficiency, add_tuner_figures
from penstock.render.meta import PipelineRef, stage_object_name
from penstock.render.router import router_name, router_url

log = logging.getLogger("penstock.status")


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
) -> tuple[list[StageStatus], list[str], list[str], Decimal]:
    """Per-stage status, names of stages not ready, stuck messages, total hourly cost.

    pods: the pods of the stages that are not rolled out, by stage name (see pod_problem).
    """
    stages, not_ready, stuck = [], [], []
    total = Decimal(0)
    for stage in spec.stages:
        desired = ready = 0
        rolled_out, stuck_reason = True, None
        cost = Decimal(0)
        variants = []
        for workload in stage.workloads():
            deployment = deployments.get(stage_object_name(pipeline, workload.component))
            w_desired, w_ready, w_rolled_out, w_stuck = _deployment_state(deployment)
            # A new Deployment starts at one replica until the HPA lifts it to minReplicas:
            # the stage is not ready before its minimum capacity serves.
            floor = workload.stage.scaling_or_default.min_replicas
            if deployment is not None and w_desired < floor:
                w_desired, w_rolled_out = floor, False
            w_cost = replica_hourly_cost(workload.stage, prices) * max(w_desired, 0)
            desired, ready, cost = desired + w_desired, ready + w_ready, cost + w_cost
            rolled_out = rolled_out and w_rolled_out
            if w_stuck and not stuck_reason:
                stuck_reason = (
                    w_stuck if workload.variant is None else f"{workload.variant}: {w_stuck}"
                )
            if workload.variant is not None:
                variants.append(
                    VariantStatus(
                        name=workload.variant,
                        desired_replicas=w_desired,
                        ready_replicas=w_ready,
                        hourly_cost=usd(w_cost),
                    )
                )
        total += cost
        stages.append(
            StageStatus(
                name=stage.name,
                desired_replicas=desired,
                ready_replicas=ready,
                hourly_cost=usd(cost),
                variants=variants or None,
            )
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
    ref: PipelineRef,
    generation: int,
    result: Result,
    deployments: dict[str, dict[str, Any]],
    prices: PriceTable,
    pods: dict[str, list[dict[str, Any]]],
    tuning: Tuning,
    previous: PipelineStatus,
    now: str,
) -> PipelineStatus:
    assert result.spec is not None
    spec = result.spec
    stages, not_ready, stuck, total = stage_statuses(ref.name, spec, deployments, prices, pods)
    ready = not not_ready
    waiting = ", ".join(not_ready)
    verdicts = [
        Verdict(
            "Ready",
            ready,
            "AllStagesReady" if ready else "StagesNotReady",
            "every stage is serving" if ready else f"waiting for stages: {waiting}",
        ),
        Verdict("Valid", True, "SpecValid", "the spec is valid"),
        Verdict(
            "Progressing",
            not ready,
            "RollingOut" if not ready else "RolloutComplete",
            f"rolling out: {waiting}" if not ready else "all stages rolled out",
        ),
        Verdict(
            "Degraded",
            bool(stuck),
            "StageRolloutStuck" if stuck else "AsExpected",
            "; ".join(stuck) if stuck else "no stage is stuck",
        ),
        tuning.metrics,
    ]
    stages_ready = len(spec.stages) - len([name for name in not_ready if name != "router"])
    status = PipelineStatus(
        observed_generation=generation,
        conditions=set_conditions(previous.conditions, verdicts, generation, now),
        stages=stages,
        stages_ready=f"{stages_ready}/{len(spec.stages)}",
        hourly_cost=usd(total),
        router_url=router_url(ref),
        warnings=[str(problem) for problem in result.warnings] or None,
    )
    add_tuner_figures(status, tuning.result)
    add_efficiency(status, tuning.efficiency)
    return status


def invalid_status(
    generation: int, result: Result, previous: PipelineStatus, now: str
) -> PipelineStatus:
    """Valid=False with the message; children and their figures stay as they were."""
    message = result.summary()
    verdicts = [
        Verdict("Ready", False, "InvalidSpec", message),
        Verdict("Valid", False, "InvalidSpec", message),
        Verdict("Progressing", False, "InvalidSpec", "not applied: the spec is invalid"),
        Verdict("Degraded", False, "AsExpected", "children of the last valid spec are kept"),
    ]
    return PipelineStatus(
        observed_generation=generation,
        conditions=set_conditions(previous.conditions, verdicts, generation, now),
        stages=previous.stages,
        stages_ready=previous.stages_ready,
        hourly_cost=previous.hourly_cost,
        savings=previous.savings,
        bottleneck=previous.bottleneck,
        critical_path=previous.critical_path,
        router_url=previous.router_url,
    )


def observed_status(body: Mapping[str, Any]) -> PipelineStatus:
    """The status a Pipeline has, typed; one this operator cannot read counts as none."""
    try:
        return PipelineStatus.model_validate(body.get("status") or {})
    except ValidationError as error:
        log.warning("ignoring the unreadable status of %s: %s", body["metadata"]["name"], error)
        return PipelineStatus()
