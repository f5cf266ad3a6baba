"""The e2e harness: a real control plane, the real kubectl, the operator as a process.

With $KUBECONFIG set, the suite runs against that cluster (kind, or any other); otherwise it
brings up the local control plane (hack/cluster.sh) and takes it down afterwards if it
started it. Nothing here fakes the Kubernetes API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port, tool

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "hack" / "cluster.sh"
CRD_FILE = ROOT / "crds" / "pipelines.penstock.dev.yaml"
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


_tool = tool  # the one lookup policy (tests/support.py); the name tests/kind imports


def wait_for(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll until check() returns a truthy value; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    kubeconfig: str
    local: bool

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_tool("kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str) -> Any | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[Any]:
        args = ["get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        items: list[Any] = self.json(*args)["items"]
        return items

    def apply(
        self, manifest: str | dict[str, Any], namespace: str
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-n", namespace, "-f", "-", stdin=text, check=False)


def _cluster_healthy(env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "status"], env=env, capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    if external:
        yield Cluster(kubeconfig=external, local=False)
        return
    env = dict(os.environ)
    was_up = _cluster_healthy(env)
    up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up"], env=env, check=False, timeout=600)
    if up.returncode != 0:
        pytest.fail("the local control plane did not start (see the log tail above)")
    kubeconfig = (
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "env"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("=", 1)[1]
        .strip("'\"")
    )
    try:
        yield Cluster(kubeconfig=kubeconfig, local=True)
    finally:
        if not was_up and os.environ.get("PENSTOCK_E2E_KEEP_CLUSTER") != "1":
            subprocess.run(["bash", str(CLUSTER_SCRIPT), "down"], env=env, check=False)


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> str:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    # Polled rather than `kubectl wait`, which errors while .status.conditions is still unset.
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "crd", "pipelines.penstock.dev", "-o", f"jsonpath={jsonpath}", check=False
            ).stdout
            == "True"
        ),
        timeout=60,
        what="the Pipeline CRD Established",
    )
    # The OpenAPI document (kubectl explain, field validation) is published a moment later.
    wait_for(
        lambda: cluster.kubectl("explain", "pipeline.spec", check=False).returncode == 0,
        timeout=60,
        what="the Pipeline schema in the apiserver's OpenAPI",
    )
    return "pipelines.penstock.dev"


class OperatorProcess:
    """`penstock operator` as a real process against the cluster."""

    def __init__(self, cluster: Cluster, log_dir: Path) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self, *extra_args: str) -> None:
        self.metrics_port = free_port()
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "penstock.cli",
                "operator",
                "--resync-seconds",
                "5",
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(free_port()),
                "--operator-image",
                "penstock:e2e",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.cluster.env(),
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
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

    def start(self, *extra_args: str) -> None:
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
