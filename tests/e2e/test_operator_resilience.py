"""The operator under failure: SIGKILL mid-reconcile, an apiserver restart."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
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


def _manifests(count: int, light: bool = False) -> str:
    """count rag Pipelines; light: every stage requests 50m CPU (generate asks 2 CPUs, and
    100 of them do not fit the fake nodes)."""
    base = example("rag")
    if light:
        for stage in base["spec"]["stages"]:
            stage["resources"] = {"requests": {"cpu": "50m", "memory": "64Mi"}}
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


def assert_exact_children(cluster: Cluster, namespace: str, pipelines: int) -> None:
    """Every rag-NN Pipeline has its children once each; nothing is left of another."""
    expected = {
        "deployments": 4 * pipelines,  # 3 stages + router
        "services": 4 * pipelines,
        "horizontalpodautoscalers": 4 * pipelines,
        "configmaps": pipelines,
        "secrets": pipelines,
    }
    # Per-Pipeline children; the namespace's shared collector (rag traces) is apart.
    selector = "penstock.dev/pipeline"
    for kind, count in expected.items():
        items = cluster.items(kind, namespace, selector)
        names = Counter(item["metadata"]["name"] for item in items)
        assert len(items) == count, f"{kind}: {len(items)} != {count}"
        assert max(names.values()) == 1, f"duplicate {kind}"
        owners = {item["metadata"]["labels"]["penstock.dev/pipeline"] for item in items}
        assert owners == {f"rag-{i:02d}" for i in range(pipelines)}, f"orphan {kind}"
    unreconciled = [
        item["metadata"]["name"]
        for item in cluster.items("pipelines", namespace)
        if item.get("status", {}).get("observedGeneration") != item["metadata"]["generation"]
    ]
    assert not unreconciled, f"not reconciled: {unreconciled}"


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
    # One ReplicaSet per Deployment: no stage was rolled out twice.
    assert len(cluster.items("replicasets", namespace, "penstock.dev/pipeline")) == 4 * PIPELINES
    assert_exact_children(cluster, namespace, PIPELINES)
    collector = cluster.get("deployment", "penstock-otel-collector", namespace)
    assert collector is not None
    owners = {ref["name"] for ref in collector["metadata"]["ownerReferences"]}
    assert owners == {f"rag-{i:02d}" for i in range(PIPELINES)}
    cluster.kubectl("delete", "pipelines", "--all", "-n", namespace, "--wait=false")


def _wait_for_deployments(cluster: Cluster, namespace: str, count: int) -> None:
    """Until count Deployments exist: the reconciles are under way, not (likely) done."""
    wait_for(
        lambda: len(cluster.items("deployments", namespace)) >= count,
        timeout=120,
        interval=0.2,
        what=f"the first {count} Deployments",
    )


def _restart_apiserver() -> None:
    restart = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "restart-apiserver"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr[-2000:]


def test_operator_survives_an_apiserver_restart(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    if not cluster.local:
        pytest.skip("restarts only the local control plane's apiserver")
    _restart_apiserver()
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


HA_PIPELINES = 100
CHAOS_PIPELINES = 50
TAKEOVER_SECONDS = 15


def _reconciles(process: OperatorProcess) -> float:
    """penstock_reconcile_total of one operator process, all results."""
    total = 0.0
    for line in process.metrics().splitlines():
        if line.startswith("penstock_reconcile_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _log_has(process: OperatorProcess, text: str) -> bool:
    return text in process.log_path.read_text(errors="replace")


@pytest.fixture
def peering(cluster: Cluster, namespace: str) -> Iterator[str]:
    """kopf's peering CRDs (the chart's copy) and a ClusterKopfPeering for one pair."""
    crds = ROOT / "charts" / "penstock" / "crds" / "kopf-peering.yaml"
    assert cluster.kubectl("apply", "-f", str(crds)).returncode == 0
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
    )
    name = f"penstock-{namespace}"
    document = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering"}
    wait_for(
        lambda: cluster.apply({**document, "metadata": {"name": name}}, namespace).returncode == 0,
        timeout=60,
        what="the ClusterKopfPeering",
    )
    yield name
    cluster.kubectl("delete", "clusterkopfpeering", name, "--wait=false", check=False)


def test_the_standby_takes_over_when_the_active_operator_is_killed(
    cluster: Cluster, operator: OperatorProcess, namespace: str, peering: str, tmp_path: Path
) -> None:
    if REAL_NODES or not cluster.local:
        pytest.skip("100 Pipelines' pods need the fake nodes of the local control plane")
    operator.stop()  # the suite's standalone operator would work beside the pair
    active = OperatorProcess(cluster, tmp_path, "active")
    standby = OperatorProcess(cluster, tmp_path, "standby")
    pair = ("--peering", peering, "--peering-lifetime", "10")
    try:
        active.start(*pair, "--priority", "20")
        wait_for(lambda: _log_has(active, "active: no live peer"), timeout=60, what="active")
        standby.start(*pair, "--priority", "10")
        wait_for(standby.healthy, timeout=60, what="the standby's health endpoint")
        wait_for(
            lambda: _log_has(standby, "standing by"), timeout=60, what="the standby standing by"
        )
        assert cluster.apply(_manifests(HA_PIPELINES, light=True), namespace).returncode == 0
        _wait_for_deployments(cluster, namespace, 40)
        assert _reconciles(standby) == 0, "a standby reconciled while the active one ran"
        active.kill()
        killed = time.monotonic()
        partial = len(cluster.items("deployments", namespace))
        wait_for(
            lambda: _log_has(standby, "active: no live peer"),
            timeout=TAKEOVER_SECONDS + 5,
            interval=0.2,
            what="the standby taking over",
        )
        took = time.monotonic() - killed
        assert took < TAKEOVER_SECONDS, f"took over after {took:.1f}s"
        wait_for(lambda: _reconciles(standby) > 0, timeout=30, what="the standby's first reconcile")
        wait_for(
            lambda: _ready_count(cluster, namespace) == HA_PIPELINES,
            timeout=420,
            interval=3,
            what=f"all {HA_PIPELINES} Pipelines Ready (Deployments at the kill: {partial})",
        )
        assert_exact_children(cluster, namespace, HA_PIPELINES)
    finally:
        for process in (active, standby):
            process.stop()
        cluster.kubectl("delete", "pipelines", "--all", "-n", namespace, "--wait=false")
        operator.start()
        wait_for(operator.healthy, timeout=60, what="the suite's operator back")


def test_chaos_every_pipeline_ends_with_exactly_its_children_and_ready(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """While 50 Pipelines reconcile: the apiserver restarts, the operator is killed, children
    are deleted at random; in the end every Pipeline has exactly its children and Ready."""
    if REAL_NODES or not cluster.local:
        pytest.skip("restarts the local control plane's apiserver; 50 Pipelines need fake nodes")
    chance = random.Random(20261203)
    assert cluster.apply(_manifests(CHAOS_PIPELINES, light=True), namespace).returncode == 0
    _wait_for_deployments(cluster, namespace, 20)
    _restart_apiserver()
    wait_for(
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        timeout=60,
        what="the apiserver back",
    )

    def delete_some(count: int) -> list[str]:
        children = sorted(_children(cluster, namespace))
        chosen = chance.sample(children, min(count, len(children)))
        if chosen:
            cluster.kubectl("delete", "-n", namespace, "--wait=false", *chosen)
        return chosen

    deleted = delete_some(10)
    operator.kill()
    deleted += delete_some(10)  # while no operator runs: only the resync or the relist sees it
    operator.start()
    wait_for(operator.healthy, timeout=60, what="the operator back")
    deleted += delete_some(10)
    wait_for(
        lambda: _ready_count(cluster, namespace) == CHAOS_PIPELINES,
        timeout=420,
        interval=3,
        what=f"all {CHAOS_PIPELINES} Pipelines Ready (deleted {len(deleted)} children)",
    )
    wait_for(
        lambda: set(deleted) <= _children(cluster, namespace),
        timeout=120,
        interval=2,
        what="every deleted child back",
    )
    assert_exact_children(cluster, namespace, CHAOS_PIPELINES)
    assert operator.alive(), operator.log_tail()
    cluster.kubectl("delete", "pipelines", "--all", "-n", namespace, "--wait=false")


def _children(cluster: Cluster, namespace: str) -> set[str]:
    """kind/name of the Pipelines' children of the kinds the chaos deletes."""
    return {
        f"{kind}/{item['metadata']['name']}"
        for kind in ("deployment", "service", "horizontalpodautoscaler", "configmap")
        for item in cluster.items(kind, namespace, "penstock.dev/pipeline")
    }
