"""Tracing with real pods: the per-namespace collector and the chart's Jaeger, in the cluster."""

from __future__ import annotations

import json
import secrets
import urllib.request
from typing import Any

from tests.kind.conftest import Cluster, port_forward, wait_for, wait_ready
from tests.kind.test_real_pods import QUESTION, final_event, rag_pipeline

JAEGER = ("penstock-system", "svc/penstock-jaeger", 16686)


def jaeger_trace(port: int, trace_id: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/traces/{trace_id}", timeout=10
        ) as r:
            data = json.loads(r.read())["data"]
    except OSError:  # 404 until the trace is stored
        return None
    return dict(data[0]) if data else None


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def test_one_request_is_one_trace_with_a_costed_span_per_stage(
    cluster: Cluster, operator: Any, namespace: str
) -> None:
    pipeline = rag_pipeline()
    pipeline["spec"]["tracing"] = {"enabled": True, "samplingRatio": 1.0}
    assert cluster.apply(pipeline, namespace).returncode == 0
    wait_ready(cluster, namespace, "rag", timeout=420)
    wait_for(
        lambda: (
            (cluster.get("deployment", "penstock-otel-collector", namespace) or {})
            .get("status", {})
            .get("availableReplicas")
        ),
        timeout=120,
        what="the namespace's collector available",
    )

    trace_id = secrets.token_hex(16)
    headers = {
        "Content-Type": "application/json",
        # Our trace: the router continues it, so the whole request is findable by its id.
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    with port_forward(cluster, namespace, "svc/rag-router", 80) as port:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", json.dumps(QUESTION).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            assert final_event(response.read())["citations"]

    stages = {"retrieve", "embed", "rerank", "generate"}

    def costed(trace: dict[str, Any], stage: str) -> list[dict[str, Any]]:
        return [
            span
            for span in trace["spans"]
            if tags(span).get("penstock.stage") == stage
            and float(tags(span).get("penstock.cost.usd", 0)) > 0
        ]

    def complete(port: int) -> dict[str, Any] | None:
        # Each process exports its spans in its own batches, so they reach Jaeger in any order:
        # the trace is complete with the router's spans and each gateway's costed one.
        trace = jaeger_trace(port, trace_id)
        if not trace or not all(costed(trace, stage) for stage in stages):
            return None
        services = {p["serviceName"] for p in trace["processes"].values()}
        return trace if "rag.router" in services else None

    with port_forward(cluster, *JAEGER) as jaeger:
        trace = wait_for(
            lambda: complete(jaeger), timeout=90, interval=2, what="the trace in Jaeger"
        )
    assert {span["traceID"] for span in trace["spans"]} == {trace_id}
    services = {p["serviceName"] for p in trace["processes"].values()}
    assert "rag.router" in services, services
    for stage in stages:
        assert all(
            tags(s).get("penstock.cost_center") == "search-team" for s in costed(trace, stage)
        )
