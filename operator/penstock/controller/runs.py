"""PipelineRuns: observe (the run, its Job and pods, the Pipeline's hourly cost) -> pure status
-> apply (create the Job once, patch the status when it changed).

A Job's spec cannot change once it runs, so the Job is created from the spec the run had then;
a later spec change is reported (`Valid` says the running Job keeps the spec it started with),
never applied. Deleting the run deletes the Job (owner reference) and so stops its pods.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from penstock.api.run import PipelineRunSpec, PipelineRunStatus, RunPhase
from penstock.api.validation import validate_run_spec
from penstock.controller.conditions import Verdict, find, now_rfc3339, set_conditions
from penstock.controller.kube import Kube
from penstock.controller.reconcile import EmitEvent
from penstock.controller.settings import OperatorSettings
from penstock.render.run import run_job, run_job_name

log = logging.getLogger("penstock.runs")
SPEC_ANNOTATION = "penstock.dev/run-generation"


def _summary(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shard's summary (its termination message), when it ended with one."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if status.get("name") == "batch" and terminated.get("exitCode") == 0:
            try:
                summary = json.loads(terminated.get("message") or "")
            except ValueError:
                return None
            return summary if isinstance(summary, dict) else None
    return None


def _failure(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The last words of a failed shard: its termination message (the log tail)."""
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") not in (None, 0):
                message = " ".join(str(terminated.get("message") or "").split())
                index = (
                    pod.get("metadata", {})
                    .get("annotations", {})
                    .get("batch.kubernetes.io/job-completion-index", "?")
                )
                return f"shard {index} exited {terminated['exitCode']}: {message[-600:]}"
    return None


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        begun = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((ended - begun).total_seconds(), 0.0)


def _hourly(pipeline: Mapping[str, Any] | None) -> Decimal | None:
    text = ((pipeline or {}).get("status") or {}).get("hourlyCost")
    try:
        return Decimal(str(text)) if text is not None else None
    except InvalidOperation:
        return None


def run_status(
    generation: int,
    spec: PipelineRunSpec | None,
    invalid: str | None,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    pipeline: Mapping[str, Any] | None,
    previous: PipelineRunStatus,
    now: str,
) -> PipelineRunStatus:
    """The status a run's observed objects call for (pure)."""
    verdicts = [
        Verdict("Valid", invalid is None, "SpecInvalid" if invalid else "SpecValid", invalid or "")
    ]
    if job is None:
        phase: RunPhase = "Failed" if invalid and previous.job_name is None else "Pending"
        waiting = invalid or (
            f"Pipeline {spec.pipeline} does not exist" if spec and pipeline is None else ""
        )
        verdicts += [
            Verdict("Complete", False, "NotStarted", waiting),
            Verdict("Failed", phase == "Failed", "SpecInvalid" if invalid else "NotStarted", ""),
        ]
        return PipelineRunStatus(
            observed_generation=generation,
            phase=phase,
            conditions=set_conditions(previous.conditions, verdicts, generation, now),
        )
    job_status = job.get("status") or {}
    conditions = {c.get("type"): c for c in job_status.get("conditions") or []}
    completions = int(job.get("spec", {}).get("completions", 1))
    succeeded = int(job_status.get("succeeded", 0))
    summaries = [s for pod in pods if (s := _summary(pod)) is not None]
    done = sum(int(s.get("resumed_after", 0)) + int(s.get("processed", 0)) for s in summaries)
    failed_items = sum(int(s.get("failed", 0)) for s in summaries)
    start = job_status.get("startTime")
    end = job_status.get("completionTime")
    failed = conditions.get("Failed", {}).get("status") == "True"
    complete = conditions.get("Complete", {}).get("status") == "True"
    if failed:
        phase = "Failed"
        end = end or conditions["Failed"].get("lastTransitionTime")
    elif complete:
        phase = "Succeeded"
    else:
        phase = "Running" if job_status.get("active") or succeeded else "Pending"
    elapsed = _seconds(start, end or now)
    rate = round(done / elapsed * 3600, 1) if elapsed and done else None
    hourly = _hourly(pipeline)
    cost = None
    if hourly is not None and elapsed and done:
        per_thousand = hourly * Decimal(str(elapsed)) / 3600 / done * 1000
        cost = f"{per_thousand:.6f}"
    why = conditions.get("Failed", {})
    failure = _failure(pods) or why.get("message") or why.get("reason") or "the Job failed"
    verdicts += [
        Verdict(
            "Complete",
            complete,
            "AllShardsDone" if complete else "Running",
            f"{succeeded}/{completions} shards done",
        ),
        Verdict(
            "Failed",
            failed,
            str(why.get("reason") or "Failed") if failed else "NotFailed",
            failure if failed else "",
        ),
    ]
    return PipelineRunStatus(
        observed_generation=generation,
        phase=phase,
        conditions=set_conditions(previous.conditions, verdicts, generation, now),
        job_name=job["metadata"]["name"],
        shards=f"{succeeded}/{completions}",
        items_done=done if summaries else None,
        items_failed=failed_items if summaries else None,
        items_per_hour=rate,
        cost_per_1000_items=cost,
        start_time=start,
        completion_time=end,
    )


class RunReconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, emit: EmitEvent) -> None:
        self.kube = kube
        self.settings = settings.render
        self.namespaces = settings.namespaces
        self.emit = emit

    def list_runs(self) -> list[dict[str, Any]]:
        """Every PipelineRun the operator watches (all namespaces, or its namespaces)."""
        if not self.namespaces:
            return self.kube.list_all("PipelineRun")
        return [
            body
            for namespace in self.namespaces
            for body in self.kube.list("PipelineRun", namespace, "")
        ]

    def reconcile(self, body: Mapping[str, Any]) -> bool:
        """Observe, plan the status, create the Job when due; True when the status changed."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation", 0))
        written = dict(body.get("status") or {})
        try:
            previous = PipelineRunStatus.model_validate(written)
        except ValidationError:
            previous = PipelineRunStatus()
        spec, problems = validate_run_spec(body.get("spec"))
        invalid = "; ".join(str(problem) for problem in problems) or None
        job = self.kube.get("Job", namespace, run_job_name(name))
        pipeline = self.kube.get("Pipeline", namespace, spec.pipeline) if spec else None
        if job is None and spec is not None and pipeline is not None and not _finished(previous):
            manifest = run_job(name, namespace, meta["uid"], spec, self.settings)
            manifest["metadata"]["annotations"] = {SPEC_ANNOTATION: str(generation)}
            if self.kube.create(manifest):
                self.emit(body, "Normal", "Created", f"created Job {manifest['metadata']['name']}")
            job = self.kube.get("Job", namespace, run_job_name(name))
        if job is not None:
            started_as = job["metadata"].get("annotations", {}).get(SPEC_ANNOTATION)
            if started_as is not None and started_as != str(generation) and invalid is None:
                invalid = (
                    f"the spec changed after the Job started (generation {started_as}): a "
                    "running Job keeps its spec; delete and create the PipelineRun to rerun"
                )
        pods = (
            self.kube.list("Pod", namespace, f"penstock.dev/run={name}") if job is not None else []
        )
        status = run_status(generation, spec, invalid, job, pods, pipeline, previous, now_rfc3339())
        document = status.to_wire()
        if document == written:
            return False
        was, now = previous.phase, status.phase
        if now != was and now in ("Succeeded", "Failed"):
            failed = find(status.conditions, "Failed")
            message = (
                failed.message
                if now == "Failed" and failed
                else (f"{status.items_done or 0} items, {status.items_failed or 0} failed")
            )
            self.emit(body, "Warning" if now == "Failed" else "Normal", now, message[:1024])
        patch: dict[str, Any] = dict(document)
        for key in written:
            patch.setdefault(key, None)
        self.kube.patch_status("PipelineRun", namespace, name, patch)
        return True


def _finished(status: PipelineRunStatus) -> bool:
    return status.phase in ("Succeeded", "Failed") and status.job_name is not None
