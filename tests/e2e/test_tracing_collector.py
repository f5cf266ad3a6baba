"""The per-namespace OpenTelemetry collector on a real control plane: shared by the tracing
Pipelines of a namespace, owned by each, updated when one goes, deleted with the last."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Cluster, OperatorProcess, example, wait_for

pytestmark = pytest.mark.e2e
COLLECTOR = "penstock-otel-collector"


def _owners(cluster: Cluster, kind: str, namespace: str) -> list[str] | None:
    obj = cluster.get(kind, COLLECTOR, namespace)
    if obj is None:
        return None
    return sorted(ref["name"] for ref in obj["metadata"].get("ownerReferences", []))


def _stamped(cluster: Cluster, namespace: str) -> set[str]:
    config_map = cluster.get("configmap", COLLECTOR, namespace)
    if config_map is None:
        return set()
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["collector.yaml"])
    return {name for name in config["processors"] if name.startswith("attributes/")}


def test_tracing_pipelines_share_a_collector_that_goes_with_the_last(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    rag = example("rag")
    assert rag["spec"]["tracing"]["enabled"] is True
    chat = copy.deepcopy(rag)
    chat["metadata"]["name"] = "chat"
    chat["spec"]["costCenter"] = "chat-team"
    assert cluster.apply(rag, namespace).returncode == 0
    assert cluster.apply(chat, namespace).returncode == 0

    def shared() -> bool:
        return all(
            _owners(cluster, kind, namespace) == ["chat", "rag"]
            for kind in ("configmap", "deployment", "service")
        ) and _stamped(cluster, namespace) == {"attributes/chat", "attributes/rag"}

    wait_for(shared, timeout=90, what="one collector owned by both Pipelines")
    service = cluster.get("service", COLLECTOR, namespace)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["otlp-http"] == 4318
    gateway = next(
        c
        for c in cluster.get("deployment", "rag-embed", namespace)["spec"]["template"]["spec"][
            "containers"
        ]
        if c["name"] == "gateway"
    )
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["PENSTOCK_GATEWAY_OTLP_ENDPOINT"] == f"http://{COLLECTOR}.{namespace}.svc:4318"
    wait_for(
        lambda: (
            (cluster.get("deployment", COLLECTOR, namespace) or {})
            .get("status", {})
            .get("availableReplicas")
        ),
        timeout=90,
        what="the collector Deployment available",
    )

    cluster.kubectl("delete", "pipeline", "chat", "-n", namespace, "--wait=true", timeout=120)
    wait_for(
        lambda: (
            _owners(cluster, "deployment", namespace) == ["rag"]
            and _stamped(cluster, namespace) == {"attributes/rag"}
        ),
        timeout=90,
        what="the deleted Pipeline gone from the collector",
    )

    patch = json.dumps({"spec": {"tracing": {"enabled": False}}})
    cluster.kubectl("patch", "pipeline", "rag", "-n", namespace, "--type=merge", "-p", patch)
    wait_for(
        lambda: all(
            cluster.get(kind, COLLECTOR, namespace) is None
            for kind in ("configmap", "deployment", "service")
        ),
        timeout=90,
        what="the collector deleted with its last tracing Pipeline",
    )
    assert cluster.get("deployment", "rag-embed", namespace) is not None
