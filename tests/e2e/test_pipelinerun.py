"""PipelineRuns on the control plane: the operator's Indexed Job, its owner, its status, a run
waiting for its Pipeline, a spec the apiserver refuses, and deletion stopping the Job."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import REAL_NODES, Cluster, OperatorProcess, example, wait_for

pytestmark = pytest.mark.e2e


def run_doc(name: str, pipeline: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": pipeline,
            # Nothing answers here: on real nodes the shards fail at once, reporting why.
            "input": "http://127.0.0.1:9/in.jsonl",
            "output": "http://127.0.0.1:9/out/",
            **spec,
        },
    }


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((body or {}).get("status") or {}).get("conditions", []):
        if item.get("type") == kind:
            return dict(item)
    return {}


def test_a_run_becomes_an_indexed_job_that_goes_with_it(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    applied = cluster.apply(example("rag"), namespace)
    assert applied.returncode == 0, applied.stderr
    applied = cluster.apply(run_doc("questions", "rag", parallelism=3, idField="id"), namespace)
    assert applied.returncode == 0, applied.stderr
    job = wait_for(
        lambda: cluster.get("job", "questions-batch", namespace),
        timeout=300,  # the Job waits for the Pipeline to be Ready
        interval=1,
        what="the run's Job",
    )
    run = cluster.get("pipelinerun", "questions", namespace)
    assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (3, 3)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["batch", f"http://rag-router.{namespace}.svc:80/"]
    assert "$(JOB_COMPLETION_INDEX)/3" in args

    def reported() -> dict[str, Any] | None:
        body = cluster.get("pipelinerun", "questions", namespace)
        status = (body or {}).get("status") or {}
        return body if status.get("jobName") == "questions-batch" and status.get("phase") else None

    body = wait_for(reported, timeout=60, what="the run's status")
    assert body["status"]["shards"].endswith("/3")
    # Fake nodes run the shards' pods forever; real ones run them, and nothing answers at
    # the input's address, so the first shard fails the run (tests/kind has the real runs).
    phase = "Failed" if REAL_NODES else "Running"
    wait_for(
        lambda: (reported() or {}).get("status", {}).get("phase") == phase,
        timeout=300,  # the Job's pods start on a busy 2-core control plane
        what=f"the run {phase}",
    )
    assert condition(body, "Valid")["status"] == "True"
    printed = cluster.kubectl("get", "plr", "questions", "-n", namespace).stdout
    assert "PIPELINE" in printed and "SHARDS" in printed and "rag" in printed

    # A running Job keeps its spec: a change is reported, not applied.
    cluster.kubectl(
        "patch", "pipelinerun", "questions", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"parallelism": 5}}',
    )  # fmt: skip
    changed = wait_for(
        lambda: (
            condition(cluster.get("pipelinerun", "questions", namespace), "Valid").get("status")
            == "False"
        ),
        timeout=60,
        what="Valid=False after a spec change",
    )
    assert changed
    body = cluster.get("pipelinerun", "questions", namespace)
    assert "the spec changed after the Job started" in condition(body, "Valid")["message"]
    assert cluster.get("job", "questions-batch", namespace)["spec"]["completions"] == 3

    cluster.kubectl("delete", "pipelinerun", "questions", "-n", namespace)
    wait_for(
        lambda: cluster.get("job", "questions-batch", namespace) is None,
        timeout=60,
        what="the Job deleted with its run",
    )


def test_a_run_waits_for_its_pipeline_and_bad_specs_are_refused(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    applied = cluster.apply(run_doc("early", "not-yet"), namespace)
    assert applied.returncode == 0, applied.stderr

    def waiting() -> dict[str, Any] | None:
        body = cluster.get("pipelinerun", "early", namespace)
        return body if ((body or {}).get("status") or {}).get("phase") == "Pending" else None

    body = wait_for(waiting, timeout=60, what="the run Pending")
    assert condition(body, "Complete")["message"] == "Pipeline not-yet does not exist"
    assert cluster.get("job", "early-batch", namespace) is None
    for field, value, words in (
        ("input", "/data/in.jsonl", "spec.input"),
        ("parallelism", 0, "spec.parallelism"),
        ("output", "ftp://x/y", "spec.output"),
    ):
        refused = cluster.apply(run_doc("bad", "rag", **{field: value}), namespace)
        assert refused.returncode != 0
        assert words in refused.stderr, refused.stderr
