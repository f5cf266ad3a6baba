"""`penstock batch --plan --apply-plan`: the plan's replicas become a cluster Pipeline's HPA
floors for the run (through the operator) and the previous floors come back after it.

The probe and the run go through the same Pipeline run locally (`penstock dev` of its file, real
stage processes); the floors go to the Pipeline on the real control plane, which the operator
renders into HorizontalPodAutoscalers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.batch_stage import pipeline_yaml
from tests.e2e.conftest import (
    ROOT,
    STAGE_ARGS,
    STAGE_IMAGE,
    Cluster,
    OperatorProcess,
    wait_for,
)

pytestmark = pytest.mark.e2e


def _cluster_copy(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(text)
    if STAGE_IMAGE:  # real nodes: an image they have, and requests that fit
        for stage in doc["spec"]["stages"]:
            stage["image"] = STAGE_IMAGE
            if STAGE_ARGS:
                stage["args"] = STAGE_ARGS.split()
            stage["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"}}
    return doc


def _min_replicas(cluster: Cluster, namespace: str) -> int | None:
    hpa = cluster.get("hpa", "batch-test-shout", namespace)
    return None if hpa is None else int(hpa["spec"].get("minReplicas", 1))


def test_the_plan_raises_the_floors_for_the_run_and_puts_them_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    text = pipeline_yaml(tmp_path / "calls.txt")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(text)
    applied = cluster.apply(_cluster_copy(text), namespace)
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: _min_replicas(cluster, namespace) == 1, timeout=60, what="shout's HPA")
    items = tmp_path / "in.jsonl"
    items.write_text("".join(json.dumps({"text": f"item {i}"}) + "\n" for i in range(500)))
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "penstock.cli", "batch", str(pipeline), "--input", str(items)]
    command += ["--output", str(tmp_path / "out.jsonl"), "--progress", "none"]
    command += ["--plan", "--apply-plan", f"{namespace}/batch-test", "--report", str(report)]
    command += ["--target-items-per-hour", "1000000", "--concurrency", "1"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=cluster.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # shout takes >= 10 ms: ~100 items/s per replica, so 278 items/s needs >= 4 at 0.7.
        wait_for(
            lambda: (value := _min_replicas(cluster, namespace)) is not None and value >= 4,
            timeout=60,
            interval=0.2,
            what="the plan's floor on shout's HPA during the run",
        )
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "floors restored" in stderr
    assert "shout 1 -> " in stderr
    stages = cluster.get("pipeline", "batch-test", namespace)["spec"]["stages"]
    assert "minReplicas" not in (stages[0].get("scaling") or {})
    wait_for(
        lambda: _min_replicas(cluster, namespace) == 1,
        timeout=60,
        what="shout's HPA floor back to 1 after the run",
    )
    summary = json.loads(report.read_text())
    assert (summary["processed"], summary["failed"]) == (500, 0)
