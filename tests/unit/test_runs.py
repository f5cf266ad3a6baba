"""PipelineRuns, the pure parts: the Job (golden file), the status from a Job and its pods."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api.run import PipelineRunSpec, PipelineRunStatus
from penstock.controller.kube import KubeError
from penstock.controller.runs import RunReconciler, run_status
from penstock.controller.settings import OperatorSettings
from penstock.render.run import run_job
from penstock.render.settings import RenderSettings
from tests.unit.test_reconcile import Events, FakeKube

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "pipelinerun-job.yaml"
UID = "00000000-0000-4000-8000-000000000002"


def example() -> tuple[dict[str, Any], PipelineRunSpec]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "pipelinerun.yaml").read_text())
    return doc, PipelineRunSpec.model_validate(doc["spec"])


def test_the_job_matches_its_golden_file() -> None:
    doc, spec = example()
    job = run_job(doc["metadata"]["name"], "ml", UID, spec, RenderSettings())
    text = yaml.safe_dump(job, sort_keys=False)
    if os.environ.get("PENSTOCK_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        f"{GOLDEN.name} differs: review, then PENSTOCK_UPDATE_GOLDEN=1"
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--shard" in container["args"]
    assert container["args"][container["args"].index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/4"
    assert container["args"][1] == "http://rag-router.ml.svc:80/"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "PipelineRun"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input", "/data/in.jsonl", "should match pattern"),
        ("output", "file:///tmp/out", "should match pattern"),
        ("parallelism", 0, "greater than or equal to 1"),
        ("pipeline", "Not_A_Name", "should match pattern"),
        ("deadlineSeconds", 5, "greater than or equal to 60"),
    ],
)
def test_a_bad_spec_names_the_field(field: str, value: Any, message: str) -> None:
    doc, _ = example()
    spec = {**doc["spec"], field: value}
    with pytest.raises(ValueError, match=message):
        PipelineRunSpec.model_validate(spec)


def pod(index: int, exit_code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {
            "containerStatuses": [
                {
                    "name": "batch",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ]
        },
    }


def summary(processed: int, failed: int) -> str:
    return json.dumps({"processed": processed, "failed": failed, "resumed_after": 0})


def job(conditions: list[dict[str, str]], succeeded: int, active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "rag-questions-batch"},
        "spec": {"completions": 4},
        "status": {
            "startTime": "2026-12-01T10:00:00Z",
            "completionTime": "2026-12-01T10:30:00Z" if succeeded == 4 else None,
            "succeeded": succeeded,
            "active": active,
            "conditions": conditions,
        },
    }


def test_a_finished_run_adds_up_its_shards() -> None:
    _, spec = example()
    pods = [pod(i, 0, summary(250, i)) for i in range(4)]
    done = job([{"type": "Complete", "status": "True"}], 4)
    pipeline = {"status": {"hourlyCost": "2.000000"}}
    status = run_status(3, spec, None, done, pods, pipeline, PipelineRunStatus(), "T")
    assert (status.phase, status.shards, status.items_done, status.items_failed) == (
        "Succeeded",
        "4/4",
        1000,
        6,
    )
    assert status.items_per_hour == 2000.0  # 1,000 items in half an hour
    assert status.cost_per_1000_items == "1.000000"  # $1 for the half hour, over 1,000 items
    complete = next(c for c in status.conditions if c.type == "Complete")
    assert (complete.status, complete.observed_generation) == ("True", 3)


def test_a_shard_that_cannot_read_its_input_fails_the_run_with_its_words() -> None:
    _, spec = example()
    words = "penstock batch: error: input s3://datasets/questions.jsonl: NoSuchKey: nope"
    failed = job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                   "lastTransitionTime": "2026-12-01T10:00:09Z"}], 0)  # fmt: skip
    # An earlier pod of shard 0 was OOM-killed and retried; shard 2 could not read its input.
    pods = [pod(0, 137, "progress lines"), pod(2, 3, words), pod(1, 130, "interrupted")]
    status = run_status(1, spec, None, failed, pods, None, PipelineRunStatus(), "T")
    assert status.phase == "Failed"
    condition = next(c for c in status.conditions if c.type == "Failed")
    assert condition.status == "True" and condition.reason == "PodFailurePolicy"
    assert condition.message == f"shard 2 exited 3: {words}"
    assert status.completion_time == "2026-12-01T10:00:09Z"
    deadline = job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                     "message": "Job was active longer than specified deadline"}], 1)  # fmt: skip
    status = run_status(1, spec, None, deadline, pods, None, PipelineRunStatus(), "T")
    condition = next(c for c in status.conditions if c.type == "Failed")
    assert condition.message == ("DeadlineExceeded: Job was active longer than specified deadline")


def test_a_retried_shard_counts_once() -> None:
    _, spec = example()
    first, again = pod(1, 0, summary(250, 0)), pod(1, 0, summary(250, 1))
    first["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "T1"
    again["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "T2"
    running = job([], 1, active=3)
    status = run_status(1, spec, None, running, [first, again], None, PipelineRunStatus(), "T")
    assert (status.phase, status.items_done, status.items_failed) == ("Running", 250, 1)


def test_a_run_without_its_job_says_why() -> None:
    _, spec = example()
    waiting = "Pipeline rag is not Ready yet"
    status = run_status(1, spec, None, None, [], None, PipelineRunStatus(), "T", waiting)
    assert status.phase == "Pending"
    complete = next(c for c in status.conditions if c.type == "Complete")
    assert complete.message == waiting


class RunKube(FakeKube):
    """The fake apiserver of test_reconcile, plus uids on create and a refusal on demand."""

    refuse: KubeError | None = None

    def create(self, manifest: dict[str, Any]) -> bool:
        if self.refuse is not None and manifest["kind"] == "Job":
            raise self.refuse
        created = super().create(manifest)
        meta = manifest["metadata"]
        stored = self.objects[(manifest["kind"], meta["namespace"], meta["name"])]
        stored["metadata"].setdefault("uid", f"uid-{meta['name']}")
        return created


def run_world(ready: bool = True) -> tuple[RunKube, RunReconciler, Events, dict[str, Any]]:
    kube, events = RunKube(), Events()
    reconciler = RunReconciler(kube, OperatorSettings(), events)  # type: ignore[arg-type]
    status = "True" if ready else "False"
    kube.objects[("Pipeline", "ml", "rag")] = {
        "metadata": {"name": "rag", "namespace": "ml"},
        "status": {"conditions": [{"type": "Ready", "status": status}], "hourlyCost": "1"},
    }
    doc, _ = example()
    body = {**doc, "metadata": {"name": "rag-questions", "namespace": "ml", "uid": "run-2",
                                "generation": 1}}  # fmt: skip
    kube.objects[("PipelineRun", "ml", "rag-questions")] = copy.deepcopy(body)
    return kube, reconciler, events, body


def test_the_job_waits_for_a_ready_pipeline_and_is_created_once() -> None:
    kube, reconciler, events, body = run_world(ready=False)
    reconciler.reconcile(body)
    assert ("Job", "ml", "rag-questions-batch") not in kube.objects
    status = kube.objects[("PipelineRun", "ml", "rag-questions")]["status"]
    assert status["phase"] == "Pending"
    assert "Pipeline rag is not Ready yet" in json.dumps(status["conditions"])
    kube.objects[("Pipeline", "ml", "rag")]["status"]["conditions"][0]["status"] = "True"
    reconciler.reconcile(body)
    reconciler.reconcile(body)
    assert [w for w in kube.writes if w.startswith("create Job")] == [
        "create Job/rag-questions-batch"
    ]
    assert ("Normal", "Created", "created Job rag-questions-batch") in events.posted


def test_a_job_of_another_run_is_never_adopted() -> None:
    kube, reconciler, _, body = run_world()
    kube.objects[("Job", "ml", "rag-questions-batch")] = {
        "metadata": {"name": "rag-questions-batch", "uid": "old-job",
                     "ownerReferences": [{"kind": "PipelineRun", "uid": "run-1"}]},
        "spec": {"completions": 4},
        "status": {"succeeded": 4, "conditions": [{"type": "Complete", "status": "True"}]},
    }  # fmt: skip
    reconciler.reconcile(body)
    status = kube.objects[("PipelineRun", "ml", "rag-questions")]["status"]
    assert status["phase"] == "Pending"
    assert "is not this run's: waiting for it to go" in json.dumps(status["conditions"])
    assert "jobName" not in status


def test_a_refused_job_is_reported_not_retried_silently() -> None:
    kube, reconciler, events, body = run_world()
    kube.refuse = KubeError(403, "exceeded quota: jobs")
    reconciler.reconcile(body)
    status = kube.objects[("PipelineRun", "ml", "rag-questions")]["status"]
    assert "the apiserver refused Job rag-questions-batch: exceeded quota" in json.dumps(status)
    assert events.posted[-1][:2] == ("Warning", "JobRefused")
    kube.refuse = KubeError(503, "etcd leader changed")
    with pytest.raises(KubeError):  # the apiserver is away: the queue retries
        reconciler.reconcile(body)


def test_a_finished_run_keeps_its_result_when_its_job_is_gone() -> None:
    kube, reconciler, _, body = run_world()
    done = {"phase": "Succeeded", "jobName": "rag-questions-batch", "itemsDone": 9}
    body = {**body, "status": done}
    assert reconciler.reconcile(body) is False
    assert not [w for w in kube.writes if w.startswith(("create", "status"))]
