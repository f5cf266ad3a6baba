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
from penstock.controller.kube import Kube, KubeError
from penstock.controller.reconcile import EmitEvent, status_patch
from penstock.controller.settings import OperatorSettings
from penstock.render.run import EXIT_UNUSABLE, run_job, run_job_name

log = logging.getLogger("penstock.runs")
SPEC_ANNOTATION = "penstock.dev/run-generation"


def _index(pod: Mapping[str, Any]) -> str:
    annotations = pod.get("metadata", {}).get("annotations", {})
    return str(annotations.get("batch.kubernetes.io/job-completion-index", "?"))


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == "batch":
            return dict((status.get("state") or {}).get("terminated") or {})
    return {}


def _summaries(pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each finished shard's summary (its termination message), one per completion index."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for pod in pods:
        terminated = _terminated(pod)
        if terminated.get("exitCode") != 0:
            continue
        try:
            summary = json.loads(terminated.get("message") or "")
        except ValueError:
            continue
        finished = str(terminated.get("finishedAt") or "")
        if isinstance(summary, dict) and finished >= found.get(_index(pod), ("", {}))[0]:
            found[_index(pod)] = (finished, summary)
    return [summary for _, summary in found.values()]


def _failure(job_failed: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """Why the Job failed: its own condition, and with the pod failure policy, the words of
    the shard that could not use its input or output (its log tail)."""
    reason = str(job_failed.get("reason") or "Failed")
    text = f"{reason}: {job_failed.get('message') or 'the Job failed'}"
    if reason != "PodFailurePolicy":
        return text
    unusable = [
        (str(terminated.get("finishedAt") or ""), pod, terminated)
        for pod in pods
        if (terminated := _terminated(pod)).get("exitCode") == EXIT_UNUSABLE
    ]
    if not unusable:
        return text
    _, pod, terminated = max(unusable, key=lambda found: found[0])
    words = " ".join(str(terminated.get("message") or "").split())[-600:]
    return f"shard {_index(pod)} exited {EXIT_UNUSABLE}: {words}"


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
    waiting: str | None = None,
) -> PipelineRunStatus:
    """The status a run's observed objects call for (pure); `waiting`: why it has no Job."""
    verdicts = [
        Verdict("Valid", invalid is None, "SpecInvalid" if invalid else "SpecValid", invalid or "")
    ]
    if job is None:
        phase: RunPhase = "Failed" if invalid and previous.job_name is None else "Pending"
        waiting = invalid or waiting or ""
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
    summaries = _summaries(pods)
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
    failure = _failure(why, pods) if failed else ""
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
            failure,
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
        waiting = None
        if _finished(previous) and (job is None or not _owned(job, meta["uid"])):
            return False  # its Job is gone (deleted by hand, or collected): the result stays
        if job is not None and not _owned(job, meta["uid"]):
            # An earlier run of the same name (garbage collection is still deleting its Job),
            # or a Job someone else made: never adopted, never counted.
            waiting = f"Job {job['metadata']['name']} is not this run's: waiting for it to go"
            job = None
        elif job is None and spec is not None and not _finished(previous):
            if pipeline is None:
                waiting = f"Pipeline {spec.pipeline} does not exist"
            elif not _ready(pipeline):
                waiting = f"Pipeline {spec.pipeline} is not Ready yet"
            else:
                job, waiting = self._create_job(body, spec, generation)
        if job is not None:
            started_as = job["metadata"].get("annotations", {}).get(SPEC_ANNOTATION)
            if started_as is not None and started_as != str(generation) and invalid is None:
                invalid = (
                    f"the spec changed after the Job started (generation {started_as}): a "
                    "running Job keeps its spec; delete and create the PipelineRun to rerun"
                )
        pods = []
        if job is not None:
            selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
            pods = self.kube.list("Pod", namespace, selector)
        status = run_status(
            generation, spec, invalid, job, pods, pipeline, previous, now_rfc3339(), waiting
        )
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
        self.kube.patch_status("PipelineRun", namespace, name, status_patch(written, document))
        return True

    def _create_job(
        self, body: Mapping[str, Any], spec: PipelineRunSpec, generation: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The new Job, or why there is none (the apiserver's refusal, e.g. a quota)."""
        meta = body["metadata"]
        manifest = run_job(meta["name"], meta["namespace"], meta["uid"], spec, self.settings)
        manifest["metadata"]["annotations"] = {SPEC_ANNOTATION: str(generation)}
        job_name = manifest["metadata"]["name"]
        try:
            if self.kube.create(manifest):
                self.emit(body, "Normal", "Created", f"created Job {job_name}")
        except KubeError as error:
            if error.status in (0, 429) or error.status >= 500:
                raise  # the apiserver is away: the queue retries with backoff
            message = f"the apiserver refused Job {job_name}: {error}"
            self.emit(body, "Warning", "JobRefused", message[:1024])
            return None, message
        job = self.kube.get("Job", meta["namespace"], job_name)
        if job is not None and not _owned(job, meta["uid"]):
            return None, f"Job {job_name} is not this run's: waiting for it to go"
        return job, None


def _owned(job: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])


def _ready(pipeline: Mapping[str, Any]) -> bool:
    conditions = (pipeline.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _finished(status: PipelineRunStatus) -> bool:
    return status.phase in ("Succeeded", "Failed") and status.job_name is not None
