"""Every query of the shipped Grafana dashboard uses only metrics and labels the code exports.

The exported set is read from the real metric objects of the gateway, the router and the
operator (after one observation each, so every series exists), not from a list kept by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from penstock.api.status import PipelineStatus
from penstock.contract.topology import StageRoute, Topology, VariantRoute
from penstock.controller import metrics as operator_metrics
from penstock.dataplane.gateway.config import GatewayConfig, HostPort
from penstock.dataplane.gateway.savings import Saving
from penstock.dataplane.gateway.telemetry import GatewayMetrics
from penstock.dataplane.router import RouterMetrics

DASHBOARD = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "penstock"
    / "files"
    / "dashboards"
    / "penstock.json"
)
FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}  # fmt: skip
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])(?!\s*\()")


def _families() -> Iterator[Metric]:
    for variant in (None, "light"):  # a variant's gateway labels its series with it
        gateway = GatewayMetrics(
            GatewayConfig(
                listen=HostPort("127.0.0.1", 0),
                upstream="http://127.0.0.1:1",
                admin_listen=HostPort("127.0.0.1", 0),
                pipeline="p",
                stage="s",
                namespace="n",
                cost_center="c",
                variant=variant,
            )
        )
        gateway.request("ok")
        gateway.lookup("hit")
        gateway.store("stored")
        gateway.batch_size.observe(4)
        gateway.saved(Saving("cache", 0.1, 0.0001))
        gateway.tokens(10, 20)
        yield from gateway.registry.collect()
    variants = (
        VariantRoute("light", "http://127.0.0.1:1"),
        VariantRoute("heavy", "http://127.0.0.1:2"),
    )
    stages = {
        "s": StageRoute("s", "http://127.0.0.1:1"),
        "v": StageRoute("v", "", variants=variants),
    }
    router = RouterMetrics(Topology("p", "n", "s", stages))
    router.request("ok")
    router.variant_call("v", "light", "served", 0.01)
    yield from router.registry.collect()
    operator_metrics.RECONCILE_TOTAL.labels(result="changed").inc(0)
    status = PipelineStatus.model_validate(
        {
            "stages": [
                {
                    "name": "s",
                    "hourlyCost": "0.5",
                    "desiredReplicas": 1,
                    "readyReplicas": 1,
                    "utilization": 0.5,
                    "recommendedReplicas": 2,
                }
            ],
            "bottleneck": "s",
        }
    )
    operator_metrics.export_status("dashboard-test", "p", "c", status)
    try:
        for value in vars(operator_metrics).values():
            if isinstance(value, MetricWrapperBase):
                yield from value.collect()
    finally:
        operator_metrics.forget_pipeline("dashboard-test", "p")


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name (as Prometheus stores it) -> its label names."""
    samples: dict[str, set[str]] = {}
    for family in _families():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def _queries() -> Iterator[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and query.startswith("label_values("):
            inner = query.removeprefix("label_values(").removesuffix(")")
            selector, _, label = inner.rpartition(",")
            yield f"variable {variable['name']}", f"max by ({label.strip()}) ({selector})"


def referenced(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """(metric -> labels in its matchers, labels the expression groups by)."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors such as [$__rate_interval]
    matchers: dict[str, set[str]] = {}
    for name, body in SELECTOR.findall(text):
        matchers.setdefault(name, set()).update(MATCHER_LABEL.findall(body))
    grouping = {label.strip() for group in GROUPING.findall(text) for label in group.split(",")}
    rest = GROUPING.sub(" ", SELECTOR.sub(lambda m: f" {m.group(1)} ", text))
    for name in IDENTIFIER.findall(rest):
        if name not in FUNCTIONS_AND_KEYWORDS:
            matchers.setdefault(name, set())
    return matchers, grouping - {""}


def test_the_parser_finds_metrics_matchers_and_grouping() -> None:
    metrics, grouping = referenced(
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{x=~"$x", y="1"}[5m])))'
        " / on (stage) b_total * 3600"
    )
    assert metrics == {"a_bucket": {"x", "y"}, "b_total": set()}
    assert grouping == {"le", "stage"}


def test_every_dashboard_query_uses_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    problems = []
    queries = list(_queries())
    assert len(queries) > 20
    for where, expr in queries:
        metrics, grouping = referenced(expr)
        assert metrics, f"{where}: no metric found in {expr!r}"
        for metric, labels in metrics.items():
            if metric not in exported:
                problems.append(f"{where}: {metric} is not exported")
                continue
            missing = (labels | grouping) - exported[metric]
            if missing:
                problems.append(f"{where}: {metric} has no label {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_the_check_fails_for_a_metric_nobody_exports(exported: dict[str, set[str]]) -> None:
    metrics, _ = referenced('sum(rate(penstock_stage_requests_totl{stage="a"}[1m]))')
    assert set(metrics) - set(exported) == {"penstock_stage_requests_totl"}
