"""tests/kind: what only a real kubelet can show, on the kind cluster of `make e2e-kind`.

hack/e2e-kind.sh brings the cluster up (every image built on this machine), installs the
operator with the chart, and runs these after tests/e2e with the same fixtures: the cluster is
$KUBECONFIG, the operator the in-cluster one.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.e2e.conftest import (  # noqa: F401 (fixtures used by the tests here)
    Cluster,
    _tool,
    cluster,
    crd,
    namespace,
    operator,
    restricted_namespace,
    wait_for,
)

IMAGE_TAG = "dev"


@pytest.fixture(scope="session", autouse=True)
def _on_kind() -> None:
    if os.environ.get("PENSTOCK_KIND") != "1":
        pytest.fail("tests/kind run on the kind cluster of `make e2e-kind` (hack/e2e-kind.sh)")


@contextmanager
def port_forward(cluster: Cluster, namespace: str, target: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` to target (svc/NAME or pod/NAME); yields the local port."""
    process = subprocess.Popen(
        [_tool("kubectl"), "port-forward", "-n", namespace, target, f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cluster.env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            pytest.fail(f"kubectl port-forward {target}: {line}{process.stdout.read(2000)}")
        yield int(found.group(1))
    finally:
        process.terminate()
        process.wait(timeout=10)


def condition(pipeline: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((pipeline or {}).get("status") or {}).get("conditions", []):
        if item.get("type") == kind:
            return dict(item)
    return {}


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 300) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pipeline = cluster.get("pipeline", name, namespace)
        return pipeline if condition(pipeline, "Ready").get("status") == "True" else None

    result: dict[str, Any] = wait_for(
        ready, timeout=timeout, interval=2, what=f"Pipeline {name} Ready"
    )
    return result


def stage_pods(cluster: Cluster, namespace: str, pipeline: str, stage: str) -> list[dict[str, Any]]:
    return [
        pod
        for pod in cluster.items(
            "pods", namespace, f"penstock.dev/pipeline={pipeline},penstock.dev/stage={stage}"
        )
        if not pod["metadata"].get("deletionTimestamp")
    ]


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def serve_http(
    cluster: Cluster,
    namespace: str,
    name: str,
    command: list[str],
    files: dict[str, Any] | None = None,
) -> str:
    """A pod of the Penstock image running `command` (a server on port 8000) behind a Service
    `name`, with `files` (a ConfigMap's volume spec) at /srv; ready, its in-cluster URL."""
    container: dict[str, Any] = {
        "name": "http",
        "image": f"penstock/penstock:{IMAGE_TAG}",
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [{"containerPort": 8000}],
        "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        "securityContext": RESTRICTED_CONTAINER,
    }
    pod_spec: dict[str, Any] = {"securityContext": RESTRICTED_POD, "containers": [container]}
    if files is not None:
        container["volumeMounts"] = [{"name": "files", "mountPath": "/srv"}]
        pod_spec["volumes"] = [{"name": "files", **files}]
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": pod_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 8000}]},
        },
    ]
    for manifest in manifests:
        applied = cluster.apply(manifest, namespace)
        assert applied.returncode == 0, applied.stderr
    wait_for(
        lambda: pod_ready(cluster.get("pod", name, namespace) or {}),
        timeout=120,
        what=f"the {name} pod Ready",
    )
    return f"http://{name}.{namespace}.svc.cluster.local:8000"


def one_stage(
    name: str, model: dict[str, Any] | None = None, cache: bool = False, **fields: Any
) -> dict[str, Any]:
    """A Pipeline of one stage: the RAG example's retrieve app (POST / answers, GET /healthz);
    fields: more of the stage's fields (camelCase)."""
    stage: dict[str, Any] = {
        "name": "retrieve",
        "image": f"penstock/examples-rag-retrieve:{IMAGE_TAG}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "/app/app.py"],
        "args": ["--port", "8080"],
        "port": 8080,
        "timeoutSeconds": 5,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    stage.update(fields)
    if model:
        stage["model"] = model
    if cache:
        stage["cache"] = {"enabled": True, "ttlSeconds": 600, "maxMemory": "16Mi"}
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {"costCenter": "e2e", "team": "kind", "output": "retrieve", "stages": [stage]},
    }
