"""The chart on a real control plane: install, upgrade, uninstall, with the real helm."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, _tool, example, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "penstock"


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [_tool("helm"), *args],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=300,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _operator_pods(cluster: Cluster, namespace: str) -> list[Any]:
    return cluster.items("pods", namespace, "app.kubernetes.io/name=penstock")


def _running(cluster: Cluster, namespace: str) -> list[Any]:
    return [p for p in _operator_pods(cluster, namespace) if p["status"].get("phase") == "Running"]


def test_install_upgrade_uninstall_keeps_crd_and_pipelines(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    if os.environ.get("PENSTOCK_E2E_OPERATOR") == "in-cluster":
        pytest.skip("the chart is already installed and running here (hack/e2e-kind.sh)")
    release = f"penstock-{uuid.uuid4().hex[:6]}"
    system = f"{namespace}-system"
    # The session already installed the CRDs with kubectl; let this release adopt them.
    for name in (crd, "pipelineruns.penstock.dev"):
        cluster.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        cluster.kubectl(
            "annotate", "crd", name, f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={system}", "--overwrite",
        )  # fmt: skip
    try:
        helm(
            cluster,
            "install",
            release,
            str(CHART),
            "-n",
            system,
            "--create-namespace",
            "--wait=false",
        )
        deployment = cluster.json(
            "get", "deployment", "-n", system, "-l", "app.kubernetes.io/name=penstock"
        )["items"][0]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        first = wait_for(
            lambda: _running(cluster, system),
            timeout=120,
            what="operator pod Running on a fake node",
        )
        assert first[0]["spec"]["nodeName"]

        # The CRD, now from the chart, still serves Pipelines.
        rag = example("rag")
        assert cluster.apply(rag, namespace).returncode == 0

        helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "-n",
            system,
            "--set",
            "log.level=DEBUG",
            "--wait=false",
        )

        def rolled() -> bool:
            pods = _running(cluster, system)
            return bool(pods) and all(
                p["metadata"]["uid"] != first[0]["metadata"]["uid"] for p in pods
            )

        wait_for(rolled, timeout=120, what="a new operator pod after helm upgrade")
        env = cluster.json(
            "get", "deployment", "-n", system, "-l", "app.kubernetes.io/name=penstock"
        )["items"][0]
        values = {
            e["name"]: e.get("value")
            for e in env["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert values["PENSTOCK_LOG_LEVEL"] == "DEBUG"

        # A typo in a value is refused by the schema and the release is left as it was.
        typo = helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "-n",
            system,
            "--set",
            "replicaCont=2",
            check=False,
        )
        assert typo.returncode != 0
        assert "replicaCont" in typo.stderr
        history = json.loads(helm(cluster, "history", release, "-n", system, "-o", "json").stdout)
        assert history[-1]["status"] == "deployed"
    finally:
        helm(cluster, "uninstall", release, "-n", system, "--wait", check=False)

    wait_for(lambda: _operator_pods(cluster, system) == [], timeout=120, what="operator removed")
    assert (
        cluster.get("crd", crd, "") is not None
        or cluster.kubectl("get", "crd", crd, check=False).returncode == 0
    )
    assert cluster.get("pipeline", "rag", namespace) is not None, (
        "helm uninstall must keep Pipelines"
    )
    rbac = cluster.kubectl(
        "get", "clusterrole", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
    ).stdout
    assert rbac.strip() == ""
    cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)
