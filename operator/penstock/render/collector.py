"""The per-namespace OpenTelemetry collector shared by the Pipelines with tracing enabled.

Gateways and routers send OTLP to it; it stamps each Pipeline's spans with that Pipeline's
cost center, team and namespace (from the spec, so a stage cannot mislabel its cost), sends
traces to the trace backend (Jaeger) and derives span metrics for Prometheus.

The configuration uses only components that both the OpenTelemetry collector contrib
distribution (the default image) and Jaeger v2 ship, so the tests validate and run it with the
Jaeger binary that `make tools` builds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from penstock.api import API_VERSION, KIND, PipelineSpec
from penstock.contract.wire import MANAGED_BY
from penstock.render.meta import PipelineRef
from penstock.render.security import container_security_context
from penstock.render.settings import RenderSettings
from penstock.render.workload import deployment, pod_spec, scrape_annotations, service

COLLECTOR_NAME = "penstock-otel-collector"
COMPONENT = "otel-collector"
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
SPAN_METRICS_PORT = 8889
HEALTH_PORT = 13133
TELEMETRY_PORT = 8888
CONFIG_KEY = "collector.yaml"
# Span metrics histogram buckets (ms): the range of the gateway's latency histogram.
SPAN_METRICS_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


@dataclass(frozen=True)
class TracedPipeline:
    """A Pipeline with tracing enabled, one of the collector's owners."""

    ref: PipelineRef
    cost_center: str
    team: str

    @classmethod
    def of(cls, ref: PipelineRef, spec: PipelineSpec) -> TracedPipeline:
        return cls(ref, spec.cost_center, spec.team)


def collector_endpoint(namespace: str) -> str:
    """The OTLP/HTTP base URL gateways and routers of a namespace send spans to."""
    return f"http://{COLLECTOR_NAME}.{namespace}.svc:{OTLP_HTTP_PORT}"


def resource_attributes(namespace: str, spec: PipelineSpec) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES of a tracing Pipeline's gateways and router: the spec's cost
    attribution on the resource of every span, before the collector stamps the spans too."""
    value = (
        f"penstock.cost_center={spec.cost_center},penstock.team={spec.team},"
        f"k8s.namespace.name={namespace}"
    )
    return {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": value}


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/instance": COLLECTOR_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "penstock",
    }


def _selector() -> dict[str, str]:
    return {"app.kubernetes.io/component": COMPONENT, "app.kubernetes.io/instance": COLLECTOR_NAME}


def _metadata(namespace: str, owners: Sequence[TracedPipeline]) -> dict[str, Any]:
    # Every tracing Pipeline of the namespace owns the collector (none as controller): the
    # garbage collector deletes it when the last of them is deleted.
    references = [
        {"apiVersion": API_VERSION, "kind": KIND, "name": owner.ref.name, "uid": owner.ref.uid}
        for owner in owners
        if owner.ref.uid
    ]
    meta: dict[str, Any] = {"name": COLLECTOR_NAME, "namespace": namespace, "labels": _labels()}
    if references:
        meta["ownerReferences"] = references
    return meta


def _stamp_processor(namespace: str, pipeline: TracedPipeline) -> dict[str, Any]:
    return {
        "include": {
            "match_type": "strict",
            "resources": [{"key": "penstock.pipeline", "value": pipeline.ref.name}],
        },
        "actions": [
            {"key": "penstock.cost_center", "value": pipeline.cost_center, "action": "upsert"},
            {"key": "penstock.team", "value": pipeline.team, "action": "upsert"},
            {"key": "k8s.namespace.name", "value": namespace, "action": "upsert"},
        ],
    }


def collector_config(
    namespace: str, pipelines: Sequence[TracedPipeline], traces_endpoint: str | None
) -> dict[str, Any]:
    """The collector configuration (a dict to dump as YAML).

    traces_endpoint: OTLP/HTTP base URL of the trace backend; None logs a one-line summary per
    batch instead (span metrics still flow).
    """
    processors: dict[str, Any] = {
        "memory_limiter": {
            "check_interval": "1s",
            "limit_percentage": 80,
            "spike_limit_percentage": 25,
        },
    }
    stamps = []
    for pipeline in sorted(pipelines, key=lambda p: p.ref.name):
        name = f"attributes/{pipeline.ref.name}"
        processors[name] = _stamp_processor(namespace, pipeline)
        stamps.append(name)
    processors["batch"] = {"send_batch_size": 512, "timeout": "2s"}
    if traces_endpoint:
        traces_exporter = "otlphttp/traces"
        exporters: dict[str, Any] = {traces_exporter: {"endpoint": traces_endpoint.rstrip("/")}}
    else:
        traces_exporter = "debug"
        exporters = {traces_exporter: {"verbosity": "basic"}}
    exporters["prometheus"] = {
        "endpoint": f"0.0.0.0:{SPAN_METRICS_PORT}",
        "resource_to_telemetry_conversion": {"enabled": False},
    }
    return {
        "extensions": {
            "healthcheckv2": {
                "use_v2": True,
                "http": {
                    "endpoint": f"0.0.0.0:{HEALTH_PORT}",
                    "status": {"enabled": True, "path": "/status"},
                },
            }
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"0.0.0.0:{OTLP_GRPC_PORT}"},
                    "http": {"endpoint": f"0.0.0.0:{OTLP_HTTP_PORT}"},
                }
            }
        },
        "processors": processors,
        "connectors": {
            "spanmetrics": {
                "namespace": "penstock.span",
                "histogram": {"explicit": {"buckets": [f"{b}ms" for b in SPAN_METRICS_BUCKETS_MS]}},
                "dimensions": [
                    {"name": "penstock.pipeline"},
                    {"name": "penstock.stage"},
                    {"name": "penstock.cost_center"},
                    {"name": "k8s.namespace.name"},
                ],
                "metrics_flush_interval": "15s",
            }
        },
        "exporters": exporters,
        "service": {
            "extensions": ["healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", *stamps, "batch"],
                    "exporters": [traces_exporter, "spanmetrics"],
                },
                "metrics/spanmetrics": {
                    "receivers": ["spanmetrics"],
                    "exporters": ["prometheus"],
                },
            },
            "telemetry": {
                "logs": {"level": "info"},
                # The collector's own metrics (accepted, refused, exported spans).
                "metrics": {
                    "level": "basic",
                    "readers": [
                        {
                            "pull": {
                                "exporter": {
                                    "prometheus": {"host": "0.0.0.0", "port": TELEMETRY_PORT}
                                }
                            }
                        }
                    ],
                },
            },
        },
    }


def render_collector(
    namespace: str, pipelines: Sequence[TracedPipeline], settings: RenderSettings
) -> list[dict[str, Any]]:
    """ConfigMap, Deployment and Service of the namespace's collector (pipelines non-empty)."""
    pipelines = sorted(pipelines, key=lambda p: p.ref.name)
    config_text = yaml.safe_dump(
        collector_config(namespace, pipelines, settings.otlp_endpoint), sort_keys=False
    )
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(namespace, pipelines),
        "data": {CONFIG_KEY: config_text},
    }
    ports = [
        {"name": "otlp-grpc", "containerPort": OTLP_GRPC_PORT, "protocol": "TCP"},
        {"name": "otlp-http", "containerPort": OTLP_HTTP_PORT, "protocol": "TCP"},
        {"name": "span-metrics", "containerPort": SPAN_METRICS_PORT, "protocol": "TCP"},
        {"name": "telemetry", "containerPort": TELEMETRY_PORT, "protocol": "TCP"},
        {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
    ]
    probe = {"httpGet": {"path": "/status", "port": "health"}, "periodSeconds": 10}
    container = {
        "name": "otel-collector",
        "image": settings.collector_image,
        "args": [f"--config=/etc/otelcol/{CONFIG_KEY}"],
        "env": [{"name": "GOMEMLIMIT", "value": "400MiB"}],
        "ports": ports,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "config", "mountPath": "/etc/otelcol", "readOnly": True}],
    }
    annotations = {
        # A new configuration rolls the collector.
        "penstock.dev/config-hash": config_hash,
        **scrape_annotations(SPAN_METRICS_PORT),
    }
    volumes = [{"name": "config", "configMap": {"name": COLLECTOR_NAME}}]
    collector = deployment(
        _metadata(namespace, pipelines),
        _selector(),
        _labels(),
        annotations,
        pod_spec([container], volumes),
        replicas=1,
    )
    service_ports = [
        {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
        for p in ports
        if p["name"] != "health"
    ]
    return [
        config_map,
        collector,
        service(_metadata(namespace, pipelines), _selector(), service_ports),
    ]
