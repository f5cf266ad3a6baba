"""PipelineRuns, the pure parts: the Job (golden file), the status from a Job and its pods."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api.run import PipelineRunSpec, PipelineRunStatus
from penstock.controller.runs import run_status
from penstock.render.run import run_job
from penstock.render.settings import RenderSettings

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
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [1]
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
    status = run_status(1, spec, None, failed, [pod(2, 1, words)], None, PipelineRunStatus(), "T")
    assert status.phase == "Failed"
    condition = next(c for c in status.conditions if c.type == "Failed")
    assert condition.status == "True" and condition.reason == "PodFailurePolicy"
    assert condition.message == f"shard 2 exited 1: {words}"
    assert status.completion_time == "2026-12-01T10:00:09Z"


def test_a_run_waits_for_its_pipeline() -> None:
    _, spec = example()
    status = run_status(1, spec, None, None, [], None, PipelineRunStatus(), "T")
    assert status.phase == "Pending"
    complete = next(c for c in status.conditions if c.type == "Complete")
    assert complete.message == "Pipeline rag does not exist"
