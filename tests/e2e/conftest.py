"""The e2e fixtures on the shared harness (tests/harness.py): a real control plane, the
real kubectl, the operator as a process.

With $KUBECONFIG set, the suite runs against that cluster (kind, or any other); otherwise it
brings up the local control plane (hack/cluster.sh) and takes it down afterwards if it
started it. Nothing here fakes the Kubernetes API.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import harness
from tests.harness import (  # noqa: F401 (the names the e2e and kind tests import from here)
    CLUSTER_SCRIPT,
    ROOT,
    Cluster,
    control_plane,
    free_port,
    tool,
    wait_for,
)

ARTIFACTS = Path(os.environ.get("PENSTOCK_E2E_ARTIFACTS", ROOT / ".cluster" / "e2e"))


# On a cluster whose nodes run containers (kind), the examples' images must be pullable and
# serve GET /healthz: these variables swap them in (hack/e2e-kind.sh sets them).
STAGE_IMAGE = os.environ.get("PENSTOCK_E2E_STAGE_IMAGE", "")
STAGE_IMAGE_UPDATE = os.environ.get("PENSTOCK_E2E_STAGE_IMAGE_UPDATE", "")
STAGE_ARGS = os.environ.get("PENSTOCK_E2E_STAGE_ARGS", "")
# Nodes that run containers (kind): the pods' CPU requests must fit the node.
REAL_NODES = bool(STAGE_IMAGE)


def example(name: str) -> dict[str, Any]:
    """An example Pipeline, adapted to the cluster under test when it runs real containers."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    if STAGE_IMAGE:
        for stage in doc["spec"]["stages"]:
            stage["image"] = STAGE_IMAGE
            if STAGE_ARGS:
                stage["args"] = STAGE_ARGS.split()
            # The examples' model hosts are placeholders a real node cannot reach.
            stage.pop("model", None)
            stage["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"}}
    return doc


def updated_image(stage: dict[str, Any]) -> str:
    """A different image for the same stage, to test that an image change rolls out."""
    if STAGE_IMAGE_UPDATE:
        return STAGE_IMAGE_UPDATE
    return str(stage["image"]).rsplit(":", 1)[0] + ":0.2.0"


_tool = tool  # the one lookup policy (tests/harness.py); the name tests/kind imports


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    # Six fake nodes (660 pods): the HA test runs 100 Pipelines of 4 pods each.
    with control_plane(nodes=6, keep_variable="PENSTOCK_E2E_KEEP_CLUSTER") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> str:
    return cluster.install_crd()


class OperatorProcess(harness.OperatorProcess):
    """The operator as a local process, with the image its rendered children run."""

    def start(self, *extra_args: str, resync_seconds: float = 5) -> None:
        super().start(
            "--operator-image", "penstock:e2e", *extra_args, resync_seconds=resync_seconds
        )


class InClusterOperator(OperatorProcess):
    """The operator installed in the cluster by Helm (PENSTOCK_E2E_OPERATOR=in-cluster)."""

    SELECTOR = "app.kubernetes.io/name=penstock"

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__(cluster, ARTIFACTS)
        self.namespace = namespace

    def _ready_pods(self) -> list[Any]:
        return [
            pod
            for pod in self.cluster.items("pods", self.namespace, self.SELECTOR)
            if not pod["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod["status"].get("conditions", [])
            )
        ]

    def start(self, *extra_args: str, resync_seconds: float = 5) -> None:
        self.starts += 1
        wait_for(self._ready_pods, timeout=180, what="the in-cluster operator pod Ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        # A forced delete with no grace period: the container gets SIGKILL.
        self.cluster.kubectl(
            "delete",
            "pod",
            "-n",
            self.namespace,
            "-l",
            self.SELECTOR,
            "--grace-period=0",
            "--force",
        )

    def stop(self) -> None:
        """The release stays installed; hack/e2e-kind.sh deletes the cluster."""

    def alive(self) -> bool:
        return bool(self._ready_pods())

    def log_tail(self, lines: int = 40) -> str:
        return self.cluster.kubectl(
            "logs", "-n", self.namespace, "-l", self.SELECTOR, f"--tail={lines}", check=False
        ).stdout


@pytest.fixture(scope="session")
def operator(cluster: Cluster, crd: str) -> Iterator[OperatorProcess]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PENSTOCK_E2E_OPERATOR") == "in-cluster":
        in_cluster = InClusterOperator(
            cluster, os.environ.get("PENSTOCK_E2E_OPERATOR_NAMESPACE", "penstock-system")
        )
        in_cluster.start()
        yield in_cluster
        return
    process = OperatorProcess(cluster, ARTIFACTS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def restricted_namespace(cluster: Cluster, namespace: str) -> str:
    """A namespace where the Pod Security admission rejects any pod short of `restricted`."""
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    return namespace
