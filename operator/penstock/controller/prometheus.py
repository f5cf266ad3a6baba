"""A small synchronous client of the Prometheus HTTP API (instant queries), and the PromQL over
the gateway metrics (names fixed in DESIGN.md) that feeds the throughput tuner.

Works with any Prometheus-compatible server (Prometheus, VictoriaMetrics, Thanos, Mimir).
Every failure is a PrometheusError naming what went wrong; the caller decides what to keep.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from penstock.contract.wire import (
    STAGE_INFLIGHT,
    STAGE_REQUEST_DURATION,
    STAGE_REQUESTS,
    VARIANT_CALLS,
)
from penstock.controller.tuner import Observation

DEFAULT_WINDOW = "2m"
DEFAULT_TIMEOUT_SECONDS = 5.0
_MAX_BODY = 16 * 1024 * 1024


class PrometheusError(Exception):
    """The metrics source is unreachable, refused the query or answered something unusable."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float
    """May be NaN or infinite (as Prometheus reports them)."""


class PrometheusClient:
    def __init__(
        self,
        base_url: str,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PrometheusError(f"Prometheus URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.headers = dict(headers or {})

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query; the result must be a vector (or a scalar)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = repr(float(at))
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", **self.headers}
        )
        body = self._get(request, promql)
        return _parse(body, promql)

    def _get(self, request: urllib.request.Request, promql: str) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                body: bytes = response.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as error:
            # Prometheus answers 400/422/503 with a JSON error body: report its message.
            detail = _error_detail(error.read(64 * 1024))
            raise PrometheusError(
                f"Prometheus at {self.base_url} answered HTTP {error.code} to {promql!r}"
                + (f": {detail}" if detail else "")
            ) from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise PrometheusError(
                f"cannot reach Prometheus at {self.base_url}: {reason}"
            ) from error
        if len(body) > _MAX_BODY:
            raise PrometheusError(f"Prometheus answer to {promql!r} exceeds {_MAX_BODY} bytes")
        return body


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    if isinstance(data, dict):
        return f"{data.get('errorType', 'error')}: {data.get('error', '')}".strip()
    return ""


def _value(pair: Any, promql: str) -> float:
    if not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusError(f"malformed sample value {pair!r} in the answer to {promql!r}")
    try:
        return float(pair[1])
    except (TypeError, ValueError) as error:
        raise PrometheusError(
            f"sample value {pair[1]!r} in the answer to {promql!r} is not a number"
        ) from error


def _parse(body: bytes, promql: str) -> list[Sample]:
    try:
        data = json.loads(body)
    except ValueError as error:
        raise PrometheusError(f"the answer to {promql!r} is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise PrometheusError(f"the answer to {promql!r} is not a JSON object")
    if data.get("status") != "success":
        raise PrometheusError(
            f"query {promql!r} failed: {data.get('errorType', 'error')}: "
            f"{data.get('error', 'status ' + repr(data.get('status')))}"
        )
    result = data.get("data")
    if not isinstance(result, dict):
        raise PrometheusError(f"the answer to {promql!r} has no data object")
    kind, items = result.get("resultType"), result.get("result")
    if kind == "scalar":
        return [Sample({}, _value(items, promql))]
    if kind != "vector" or not isinstance(items, list):
        raise PrometheusError(f"the answer to {promql!r} is a {kind!r}, not an instant vector")
    samples = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("metric", {}), dict):
            raise PrometheusError(f"malformed series {item!r} in the answer to {promql!r}")
        labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
        samples.append(Sample(labels, _value(item.get("value"), promql)))
    return samples


def escape_label_value(value: str) -> str:
    """A PromQL double-quoted string literal's content: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def pipeline_selector(namespace: str, pipeline: str) -> str:
    return (
        f'{{namespace="{escape_label_value(namespace)}",pipeline="{escape_label_value(pipeline)}"}}'
    )


def request_rate_query(namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> str:
    selector = pipeline_selector(namespace, pipeline)
    return f"sum by (stage) (rate({STAGE_REQUESTS}{selector}[{window}]))"


def latency_query(namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> str:
    selector = pipeline_selector(namespace, pipeline)
    metric = STAGE_REQUEST_DURATION
    return (
        f"sum by (stage) (rate({metric}_sum{selector}[{window}]))"
        f" / sum by (stage) (rate({metric}_count{selector}[{window}]))"
    )


def inflight_query(namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> str:
    selector = pipeline_selector(namespace, pipeline)
    return f"sum by (stage) (avg_over_time({STAGE_INFLIGHT}{selector}[{window}]))"


SAVED_SECONDS = "penstock_stage_saved_seconds_total"
SAVED_USD = "penstock_stage_saved_usd_total"


def savings_query(metric: str, namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> str:
    """Per stage and reason, per hour: 3600 x the per-second rate over the window."""
    selector = pipeline_selector(namespace, pipeline)
    return f"3600 * sum by (stage, reason) (rate({metric}{selector}[{window}]))"


@dataclass(frozen=True)
class Saved:
    stage: str
    reason: str
    seconds_per_hour: float
    usd_per_hour: float


def observe_savings(
    client: PrometheusClient, namespace: str, pipeline: str, window: str = DEFAULT_WINDOW
) -> list[Saved]:
    """What each stage's optimizations saved per hour (two instant queries)."""
    figures: dict[tuple[str, str], list[float]] = {}
    for index, metric in enumerate((SAVED_SECONDS, SAVED_USD)):
        for sample in client.query(savings_query(metric, namespace, pipeline, window)):
            stage, reason = sample.labels.get("stage"), sample.labels.get("reason")
            if stage is None or reason is None:
                continue
            value = sample.value if math.isfinite(sample.value) and sample.value > 0 else 0.0
            figures.setdefault((stage, reason), [0.0, 0.0])[index] = value
    return [
        Saved(stage, reason, pair[0], pair[1]) for (stage, reason), pair in sorted(figures.items())
    ]


@dataclass(frozen=True)
class UnitCost:
    per_request: float | None
    """USD per request through the stage's gateways."""
    per_million_tokens: float | None
    """USD per 1M tokens the stage reported (input and output together)."""


@dataclass(frozen=True)
class VariantFigures:
    stage: str
    variant: str
    served_share: float | None = None
    """Share of the stage's answers it gave."""
    escalated_share: float | None = None
    """Share of its calls a cascade went on from."""
    cost_per_request: float | None = None


@dataclass(frozen=True)
class Efficiency:
    """What a Pipeline's stages saved and what a unit of their work cost, over a window."""

    saved: tuple[Saved, ...] = ()
    unit_costs: tuple[tuple[str, UnitCost], ...] = ()
    variants: tuple[VariantFigures, ...] = ()


def variant_queries(namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> list[str]:
    """Per stage and variant: served share, escalated share, cost per request."""
    selector = pipeline_selector(namespace, pipeline)
    served = selector[:-1] + ',outcome="served"}'
    passed = selector[:-1] + ',outcome!="served"}'
    by = "sum by (stage, variant)"
    cost = f"{by} (rate(penstock_stage_cost_usd_total{selector}[{window}]))"
    return [
        f"{by} (rate({VARIANT_CALLS}{served}[{window}])) / on (stage) group_left"
        f" sum by (stage) (rate({VARIANT_CALLS}{served}[{window}]))",
        f"{by} (rate({VARIANT_CALLS}{passed}[{window}]))"
        f" / {by} (rate({VARIANT_CALLS}{selector}[{window}]))",
        f"{cost} / {by} (rate({STAGE_REQUESTS}{selector}[{window}]))",
    ]


def observe_variants(
    client: PrometheusClient, namespace: str, pipeline: str, window: str = DEFAULT_WINDOW
) -> tuple[VariantFigures, ...]:
    figures: dict[tuple[str, str], list[float | None]] = {}
    for index, query in enumerate(variant_queries(namespace, pipeline, window)):
        for sample in client.query(query):
            stage, variant = sample.labels.get("stage"), sample.labels.get("variant")
            if not stage or not variant:
                continue
            value = sample.value if math.isfinite(sample.value) and sample.value >= 0 else None
            figures.setdefault((stage, variant), [None, None, None])[index] = value
    return tuple(
        VariantFigures(stage, variant, *values)
        for (stage, variant), values in sorted(figures.items())
    )


def unit_cost_queries(namespace: str, pipeline: str, window: str = DEFAULT_WINDOW) -> list[str]:
    selector = pipeline_selector(namespace, pipeline)
    cost = f"sum by (stage) (rate(penstock_stage_cost_usd_total{selector}[{window}]))"
    return [
        f"{cost} / sum by (stage) (rate({STAGE_REQUESTS}{selector}[{window}]))",
        f"1e6 * {cost} / sum by (stage) (rate(penstock_stage_tokens_total{selector}[{window}]))",
    ]


def observe_efficiency(
    client: PrometheusClient,
    namespace: str,
    pipeline: str,
    window: str = DEFAULT_WINDOW,
    variants: bool = False,
) -> Efficiency:
    """Savings per hour, cost per request and per 1M tokens (four instant queries), and with
    variants their figures (three more)."""
    saved = tuple(observe_savings(client, namespace, pipeline, window))
    per_request, per_tokens = (
        _by_stage(client.query(query)) for query in unit_cost_queries(namespace, pipeline, window)
    )
    stages = sorted(set(per_request) | set(per_tokens))
    return Efficiency(
        saved,
        tuple((stage, UnitCost(per_request.get(stage), per_tokens.get(stage))) for stage in stages),
        observe_variants(client, namespace, pipeline, window) if variants else (),
    )


def _by_stage(samples: Iterable[Sample]) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for sample in samples:
        stage = sample.labels.get("stage")
        if stage is None:
            continue
        value = sample.value
        # NaN (0/0 latency without traffic) or negative/infinite figures count as missing.
        figures[stage] = value if math.isfinite(value) and value >= 0 else None
    return figures


def observe_pipeline(
    client: PrometheusClient,
    namespace: str,
    pipeline: str,
    stages: Iterable[str],
    ready_replicas: Mapping[str, int] | None = None,
    window: str = DEFAULT_WINDOW,
) -> dict[str, Observation]:
    """The tuner's input for one pipeline: three instant queries. A stage without a series gets
    None for that figure. Raises PrometheusError when any query fails."""
    rates = _by_stage(client.query(request_rate_query(namespace, pipeline, window)))
    latencies = _by_stage(client.query(latency_query(namespace, pipeline, window)))
    inflight = _by_stage(client.query(inflight_query(namespace, pipeline, window)))
    replicas = ready_replicas or {}
    return {
        stage: Observation(
            rps=rates.get(stage),
            latency_seconds=latencies.get(stage),
            inflight=inflight.get(stage),
            ready_replicas=replicas.get(stage),
        )
        for stage in stages
    }
