"""The throughput tuner on real pods: an in-cluster Prometheus finds the gateways through the
Kubernetes API (pod discovery, the scrape annotations the operator renders), the in-cluster
operator reads it under load, raises the stage's HPA floor, and the pods the HPA adds really run:
Ready, and scraped by that Prometheus. The stage is a plain one (no cache, batching or tracing):
with the tuner on, the operator puts it behind a gateway so that it can be measured at all."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.kind.conftest import (
    Cluster,
    _tool,
    one_stage,
    pod_ready,
    port_forward,
    stage_pods,
    wait_for,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]
RELEASE, OPERATOR_NAMESPACE = "penstock", "penstock-system"


def prometheus_image() -> str:
    listed = subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh"), "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return next(image for image in listed if image.startswith("penstock/prometheus:"))


def prometheus_manifests(namespace: str) -> list[dict[str, Any]]:
    """Prometheus scraping the pods of one namespace that carry the scrape annotations."""
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
        "scrape_configs": [
            {
                "job_name": "penstock-gateways",
                "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "regex": "true",
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": "admin",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "k8s_pod"},
                ],
            }
        ],
    }
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    labels = {"app": "prometheus"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "prometheus"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "prometheus"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "prometheus",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus"},
            "data": {"prometheus.yml": yaml.safe_dump(config)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "prometheus", "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "prometheus",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "prometheus",
                                "image": prometheus_image(),
                                "imagePullPolicy": "IfNotPresent",
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    "--storage.tsdb.path=/prometheus",
                                    "--web.listen-address=:9090",
                                ],
                                "ports": [{"name": "http", "containerPort": 9090}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/-/ready", "port": 9090},
                                    "periodSeconds": 2,
                                },
                                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                                "securityContext": restricted,
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"},
                                    {"name": "data", "mountPath": "/prometheus"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "prometheus"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prometheus"},
            "spec": {"selector": labels, "ports": [{"port": 9090, "targetPort": 9090}]},
        },
    ]


def tuned_pipeline() -> dict[str, Any]:
    """One stage declaring 1 request/s per replica: a few requests/s need a floor of 3."""
    scaling = {"minReplicas": 1, "maxReplicas": 3, "targetThroughputPerReplica": 1}
    return one_stage("tuned", scaling=scaling)


def helm_operator(cluster: Cluster, *settings: str) -> None:
    """Change the chart's values of the installed operator and wait for its rollout."""
    args = [_tool("helm"), "upgrade", RELEASE, str(ROOT / "charts" / "penstock")]
    args += ["-n", OPERATOR_NAMESPACE, "--reuse-values", "--wait", "--timeout", "3m"]
    for setting in settings:
        args += ["--set", setting]
    done = subprocess.run(args, capture_output=True, text=True, env=cluster.env(), timeout=240)
    assert done.returncode == 0, done.stderr


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.loads(response.read())["data"]["result"])


def _load(port: int, stop: threading.Event, answered: list[int]) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        body = json.dumps({"text": f"tuner question {number} {time.monotonic()}"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                response.read()
                answered.append(response.status)
        except (urllib.error.HTTPError, OSError):
            answered.append(0)
            time.sleep(0.2)


def test_tuner_raises_the_hpa_floor_from_in_cluster_prometheus_and_the_new_pods_run(
    cluster: Cluster, operator: Any, namespace: str
) -> None:
    ns = namespace
    for manifest in prometheus_manifests(ns):
        applied = cluster.apply(manifest, ns)
        assert applied.returncode == 0, applied.stderr
    assert cluster.apply(tuned_pipeline(), ns).returncode == 0
    wait_ready(cluster, ns, "tuned", timeout=240)
    hpa = cluster.get("hpa", "tuned-retrieve", ns) or {}
    assert hpa.get("spec", {}).get("minReplicas", 1) == 1, hpa.get("spec")
    plain = stage_pods(cluster, ns, "tuned", "retrieve")
    assert [c["name"] for c in plain[0]["spec"]["containers"]] == ["stage"]

    prometheus_url = f"http://prometheus.{ns}.svc.cluster.local:9090"
    helm_operator(cluster, f"prometheus.url={prometheus_url}", "prometheus.tunerIntervalSeconds=2")
    stop = threading.Event()
    answered: list[int] = []
    try:
        with (
            port_forward(cluster, ns, "svc/tuned-router", 80) as router,
            port_forward(cluster, ns, "svc/prometheus", 9090) as prometheus,
        ):
            workers = [
                threading.Thread(target=_load, args=(router, stop, answered), daemon=True)
                for _ in range(4)
            ]
            for worker in workers:
                worker.start()

            def floor_raised() -> dict[str, Any] | None:
                found = cluster.get("hpa", "tuned-retrieve", ns) or {}
                return found if found.get("spec", {}).get("minReplicas", 1) >= 2 else None

            hpa = wait_for(
                floor_raised, timeout=180, interval=2, what="the tuner to raise the HPA floor"
            )
            floor = int(hpa["spec"]["minReplicas"])
            assert hpa["spec"]["maxReplicas"] == 3

            def running() -> list[dict[str, Any]] | None:
                pods = [p for p in stage_pods(cluster, ns, "tuned", "retrieve") if pod_ready(p)]
                return pods if len(pods) >= floor else None

            pods = wait_for(running, timeout=240, interval=2, what=f"{floor} stage pods Ready")
            for pod in pods:
                assert {c["name"] for c in pod["spec"]["containers"]} == {"stage", "gateway"}
                for status in pod["status"]["containerStatuses"]:
                    assert status.get("state", {}).get("running"), (pod["metadata"]["name"], status)
            names = {pod["metadata"]["name"] for pod in pods}

            def scraped() -> set[str] | None:
                up = query(prometheus, 'up{job="penstock-gateways"} == 1')
                seen = {str(series["metric"].get("k8s_pod")) for series in up}
                return seen if names <= seen else None

            wait_for(scraped, timeout=60, interval=2, what="Prometheus scraping the new gateways")
            rates = query(
                prometheus,
                f'sum(rate(penstock_stage_requests_total{{namespace="{ns}",stage="retrieve"}}[1m]))',
            )
            assert rates and float(rates[0]["value"][1]) > 1, rates
            status = cluster.get("pipeline", "tuned", ns)["status"]
            stage = next(s for s in status["stages"] if s["name"] == "retrieve")
            assert stage["observedRps"] > 0 and stage["recommendedReplicas"] >= 2, stage
            metrics = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
            assert metrics["status"] == "True", metrics
    finally:
        stop.set()
        helm_operator(cluster, "prometheus.url=")
    assert answered.count(200) > 20, f"{answered.count(200)} of {len(answered)} answered"
