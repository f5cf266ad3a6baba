"""The operator under failure: SIGKILL mid-reconcile, an apiserver restart."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import (
    CLUSTER_SCRIPT,
    REAL_NODES,
    Cluster,
    OperatorProcess,
    example,
    wait_for,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# On kind every pod needs real CPU on one 2-core node: two Pipelines' pods (with the control
# plane, the operator and Jaeger) fit it, twenty do not; fake nodes take any number.
PIPELINES = 2 if REAL_NODES else 20


def _manifests(count: int) -> str:
    base = example("rag")
    docs = []
    for index in range(count):
        base["metadata"]["name"] = f"rag-{index:02d}"
        docs.append(yaml.safe_dump(base))
    return "---\n".join(docs)


def _ready_count(cluster: Cluster, namespace: str) -> int:
    ready = 0
    for item in cluster.items("pipelines", namespace):
        for cond in item.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["status"] == "True":
                ready += 1
    return ready


def test_sigkill_mid_reconcile_leaves_exactly_the_right_children(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(_manifests(PIPELINES), namespace).returncode == 0
    # Kill once some children exist but (very likely) not all: mid-reconcile.
    wait_for(
        lambda: len(cluster.items("deployments", namespace)) >= 3,
        timeout=60,
        interval=0.1,
        what="the first children",
    )
    operator.kill()
    partial = len(cluster.items("deployments", namespace))
    operator.start()
    wait_for(
        lambda: _ready_count(cluster, namespace) == PIPELINES,
        timeout=300,
        interval=2,
        what=f"all {PIPELINES} Pipelines Ready after the restart (children before restart: {partial})",
    )
    expected = {
        "deployments": 4 * PIPELINES,  # 3 stages + router
        "services": 4 * PIPELINES,
        "horizontalpodautoscalers": 4 * PIPELINES,
        "configmaps": PIPELINES,
        "secrets": PIPELINES,
        "replicasets": 4 * PIPELINES,
    }
    # Per-Pipeline children; the namespace's shared collector (rag traces) is checked below.
    selector = "penstock.dev/pipeline"
    for kind, count in expected.items():
        items = cluster.items(kind, namespace, selector)
        names = Counter(item["metadata"]["name"] for item in items)
        assert len(items) == count, f"{kind}: {len(items)} != {count}"
        assert max(names.values()) == 1, f"duplicate {kind}"
        pipelines = {item["metadata"]["labels"]["penstock.dev/pipeline"] for item in items}
        assert pipelines == {f"rag-{i:02d}" for i in range(PIPELINES)}, f"orphan {kind}"
    collector = cluster.get("deployment", "penstock-otel-collector", namespace)
    assert collector is not None
    owners = {ref["name"] for ref in collector["metadata"]["ownerReferences"]}
    assert owners == {f"rag-{i:02d}" for i in range(PIPELINES)}
    cluster.kubectl("delete", "pipelines", "--all", "-n", namespace, "--wait=false")


def test_operator_survives_an_apiserver_restart(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    if not cluster.local:
        pytest.skip("restarts only the local control plane's apiserver")
    restart = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "restart-apiserver"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr[-2000:]
    time.sleep(2)
    assert operator.alive(), operator.log_tail()
    # A Pipeline created after the restart is picked up: the watch resumed.
    rag = example("rag")
    wait_for(
        lambda: cluster.apply(rag, namespace).returncode == 0, timeout=60, what="apiserver back"
    )
    wait_for(
        lambda: _ready_count(cluster, namespace) == 1,
        timeout=180,
        interval=1,
        what="a Pipeline created after the apiserver restart to become Ready",
    )
    assert operator.alive(), operator.log_tail()
