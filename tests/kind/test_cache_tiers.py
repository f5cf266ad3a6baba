"""Cache tiers in real pods. The disk tier: the operator's claim, bound to a volume on the node,
mounted in the gateway; an answer stored there is served by the pod that replaces a deleted one
(whose Redis sidecar starts empty). The managed shared tier: a Redis the operator runs for the
Pipeline, through which one replica serves what another stored."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

from penstock.contract.wire import GATEWAY_PORT
from tests.harness import wait_for
from tests.kind.conftest import (
    Cluster,
    one_stage,
    pod_ready,
    port_forward,
    stage_pods,
    wait_ready,
)
from tests.kind.test_real_pods import post

QUESTION = {"text": "How do I keep embeddings across restarts?"}


def _node_directory() -> str:
    """A directory on the kind node every uid may write (a hostPath volume has no fsGroup)."""
    path = f"/var/lib/penstock-e2e/disk-{uuid.uuid4().hex[:8]}"
    node = f"{os.environ.get('KIND_CLUSTER', 'penstock')}-control-plane"
    subprocess.run(["docker", "exec", node, "mkdir", "-p", path], check=True, timeout=30)
    subprocess.run(["docker", "exec", node, "chmod", "1777", path], check=True, timeout=30)
    return path


def _volume_for(claim: dict[str, Any], path: str) -> dict[str, Any]:
    """The cluster has no dynamic provisioner: a volume made for exactly this claim."""
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{meta['namespace']}-{meta['name']}"[:63]},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "storageClassName": claim["spec"].get("storageClassName", "standard"),
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": meta["namespace"], "name": meta["name"]},
            "hostPath": {"path": path, "type": "Directory"},
        },
    }


def _ask(cluster: Cluster, namespace: str) -> tuple[int, str, str | None]:
    with port_forward(cluster, namespace, "svc/disk-retrieve", 80) as port:
        status, headers, body = post(port, QUESTION)
    assert status == 200, body[:500]
    return status, headers["X-Penstock-Cache"], headers.get("X-Penstock-Cache-Tier")


def test_an_answer_on_the_disk_tier_is_served_by_the_pod_that_replaces_its_writer(
    cluster: Cluster, operator: Any, restricted_namespace: str
) -> None:
    namespace = restricted_namespace
    pipeline = one_stage("disk", cache=True)
    pipeline["spec"]["stages"][0]["cache"]["disk"] = {"size": "64Mi", "maxEntrySize": "1Mi"}
    assert cluster.apply(pipeline, namespace).returncode == 0

    def claim() -> dict[str, Any] | None:
        claims = cluster.items("pvc", namespace, "penstock.dev/pipeline=disk")
        return claims[0] if claims else None

    made = wait_for(claim, timeout=60, what="the disk tier's PersistentVolumeClaim")
    volume = _volume_for(made, _node_directory())
    applied = cluster.apply(volume, namespace)
    assert applied.returncode == 0, applied.stderr
    try:
        wait_ready(cluster, namespace, "disk", timeout=240)
        assert _ask(cluster, namespace) == (200, "miss", None)
        assert _ask(cluster, namespace) == (200, "hit", "pod")
        (writer,) = stage_pods(cluster, namespace, "disk", "retrieve")
        name = writer["metadata"]["name"]
        cluster.kubectl("delete", "pod", "-n", namespace, name, "--wait=true", timeout=120)

        def replaced() -> bool:
            pods = stage_pods(cluster, namespace, "disk", "retrieve")
            return any(p["metadata"]["name"] != name and pod_ready(p) for p in pods)

        wait_for(replaced, timeout=180, interval=1, what="a new Ready stage pod")
        # The new pod's Redis is empty: the answer comes from the files its predecessor wrote.
        assert _ask(cluster, namespace) == (200, "hit", "disk")
        assert _ask(cluster, namespace) == (200, "hit", "pod")  # filled on the way back
    finally:
        cluster.kubectl("delete", "pipeline", "disk", "-n", namespace, "--wait=true", check=False)
        cluster.kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false", check=False)


def _ask_pod(cluster: Cluster, namespace: str, pod: str) -> tuple[str, str | None]:
    with port_forward(cluster, namespace, f"pod/{pod}", GATEWAY_PORT) as port:
        status, headers, body = post(port, QUESTION)
    assert status == 200, body[:500]
    return headers["X-Penstock-Cache"], headers.get("X-Penstock-Cache-Tier")


def test_replicas_share_answers_through_the_redis_the_operator_runs_for_the_pipeline(
    cluster: Cluster, operator: Any, restricted_namespace: str
) -> None:
    namespace = restricted_namespace
    pipeline = one_stage("managed", cache=True, scaling={"minReplicas": 2, "maxReplicas": 2})
    pipeline["spec"]["stages"][0]["cache"]["shared"] = {"managed": {"maxMemory": "16Mi"}}
    assert cluster.apply(pipeline, namespace).returncode == 0
    try:
        wait_ready(cluster, namespace, "managed", timeout=240)

        def redis_ready() -> bool:
            body = cluster.get("deployment", "managed-cache", namespace) or {}
            return (body.get("status") or {}).get("readyReplicas") == 1

        wait_for(redis_ready, timeout=120, what="the managed Redis Ready")

        def two_ready() -> list[str] | None:
            pods = [
                p for p in stage_pods(cluster, namespace, "managed", "retrieve") if pod_ready(p)
            ]
            return [p["metadata"]["name"] for p in pods] if len(pods) == 2 else None

        first, second = wait_for(two_ready, timeout=180, what="two Ready replicas")
        assert _ask_pod(cluster, namespace, first) == ("miss", None)
        time.sleep(1)  # the store follows the answer
        # The other replica's own tiers are empty: the answer comes from the managed Redis.
        assert _ask_pod(cluster, namespace, second) == ("hit", "shared")
    finally:
        cluster.kubectl(
            "delete", "pipeline", "managed", "-n", namespace, "--wait=true", check=False
        )
