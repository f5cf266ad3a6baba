"""The RAG example and the data plane in real pods: a real kubelet, real containers, real probes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.kind.conftest import (
    Cluster,
    pod_ready,
    port_forward,
    stage_pods,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[2]
QUESTION = {"text": "How do I scale pods automatically based on CPU?"}
REWORDED = "How can I scale pods automatically based on CPU?"


def rag_pipeline() -> dict[str, Any]:
    """The RAG example as `make demo` applies it on kind (hack/kind/rag-pipeline.py)."""
    printed = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "kind" / "rag-pipeline.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc: dict[str, Any] = yaml.safe_load(printed)
    return doc


def post(port: int, body: Any, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def final_event(stream: bytes) -> dict[str, Any]:
    """The `event: done` payload of the generate stage's server-sent events."""
    events = stream.decode().split("\n\n")
    for event in events:
        lines = event.strip().splitlines()
        if lines and lines[0] == "event: done":
            done: dict[str, Any] = json.loads(lines[1].removeprefix("data: "))
            return done
    raise AssertionError(f"no `event: done` in {stream[-500:]!r}")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus text-format metric's samples that carry these labels."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def gateway_metrics(cluster: Cluster, namespace: str, pod: str) -> str:
    with (
        port_forward(cluster, namespace, f"pod/{pod}", 9090) as port,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response,
    ):
        return str(response.read().decode())


def test_rag_example_runs_as_non_root_on_read_only_roots_and_answers_from_the_cache(
    cluster: Cluster, operator: Any, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    applied = cluster.apply(rag_pipeline(), ns)
    assert applied.returncode == 0, applied.stderr
    wait_ready(cluster, ns, "rag", timeout=420)

    pods = [p for p in cluster.items("pods", ns, "penstock.dev/pipeline=rag") if pod_ready(p)]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert {"retrieve", "embed", "rerank", "generate", "router"} <= components
    for pod in pods:
        name = pod["metadata"]["name"]
        statuses = pod["status"]["containerStatuses"]
        assert statuses and all(s["ready"] and "running" in s["state"] for s in statuses), name
        for container in pod["spec"]["containers"]:
            c = container["name"]
            # Asked of the running process, not of the manifest: the kubelet enforced it.
            uid = cluster.kubectl("exec", "-n", ns, name, "-c", c, "--", "id", "-u").stdout.strip()
            assert uid.isdigit() and int(uid) != 0, f"{name}/{c} runs as uid {uid}"
            wrote = cluster.kubectl(
                "exec", "-n", ns, name, "-c", c, "--", "touch", "/penstock-probe", check=False
            )
            assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, (name, c)

    retrieve = stage_pods(cluster, ns, "rag", "retrieve")[0]["metadata"]["name"]
    before = gateway_metrics(cluster, ns, retrieve)
    with port_forward(cluster, ns, "svc/rag-router", 80) as port:
        status, _, body = post(port, QUESTION, timeout=60)
        assert status == 200, body[:500]
        answer = final_event(body)
        assert "Horizontal Pod Autoscaler" in answer["answer"], answer
        assert answer["citations"] and all(c["title"] for c in answer["citations"]), answer
        again_status, _, again = post(port, QUESTION, timeout=60)
        assert again_status == 200 and again == body
        # Reworded: retrieve's semantic tier answers it with the first question's documents
        # (the embed stage's Service embeds it, across pods).
        reworded, _, _ = post(port, {"text": REWORDED}, timeout=60)
        assert reworded == 200
    after = gateway_metrics(cluster, ns, retrieve)
    semantic_hits = "penstock_stage_semantic_lookups_total"
    assert metric(after, semantic_hits, result="hit") >= 1, after
    # The second identical request was answered by retrieve's Redis sidecar, not by retrieve.
    hits = metric(after, "penstock_stage_cache_lookups_total", result="hit") - metric(
        before, "penstock_stage_cache_lookups_total", result="hit"
    )
    assert hits >= 1, after
