"""One builder for "a workload": the Deployment, Service and HorizontalPodAutoscaler that a
stage, the router and the namespace's collector each are, so the three cannot diverge.

What every Penstock pod gets: no service-account token and no service links (a stage reaches
nothing by environment), the restricted security context, a bounded revision history, a rolling
update that never drops below the wanted replicas, and the scrape annotations when it serves
metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from penstock.api.features import Scaling
from penstock.render.meta import SERVING_PORT_NAME
from penstock.render.security import pod_security_context

SCALE_DOWN_WINDOW_SECONDS = 300
"""Scale down only after a stable window, so a short dip does not drop capacity."""


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The widespread Prometheus scrape convention (a PodMonitor can select the port instead)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": path,
    }


def pod_spec(
    containers: Sequence[dict[str, Any]], volumes: Sequence[dict[str, Any]], **more: Any
) -> dict[str, Any]:
    """A pod spec with Penstock's defaults; ``more`` adds fields (initContainers, ...)."""
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": list(containers),
        "volumes": list(volumes),
        "terminationGracePeriodSeconds": 30,
    }
    spec.update({key: value for key, value in more.items() if value})
    return spec


def deployment(
    metadata: dict[str, Any],
    selector: dict[str, str],
    template_labels: dict[str, str],
    template_annotations: dict[str, str] | None,
    pod: dict[str, Any],
    replicas: int | None = None,
) -> dict[str, Any]:
    """replicas: None when a HorizontalPodAutoscaler owns the field."""
    template: dict[str, Any] = {"labels": template_labels}
    if template_annotations:
        template["annotations"] = template_annotations
    spec: dict[str, Any] = {}
    if replicas is not None:
        spec["replicas"] = replicas
    spec |= {
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": selector},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        },
        "template": {"metadata": template, "spec": pod},
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def http_ports(service_port: int, admin_port: int | None) -> list[dict[str, Any]]:
    """The ``http`` port (and the ``admin`` one when the pod serves metrics) of a Service."""
    ports: list[dict[str, Any]] = [
        {
            "name": SERVING_PORT_NAME,
            "port": service_port,
            "targetPort": SERVING_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    if admin_port is not None:
        ports.append(
            {"name": "admin", "port": admin_port, "targetPort": "admin", "protocol": "TCP"}
        )
    return ports


def service(
    metadata: dict[str, Any], selector: dict[str, str], ports: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"type": "ClusterIP", "selector": selector, "ports": list(ports)},
    }


def autoscaler(
    metadata: dict[str, Any],
    scaling: Scaling,
    min_replicas: int,
    more_metrics: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The HPA of the Deployment of the same name: CPU utilization at the scaling target."""
    cpu = {
        "type": "Resource",
        "resource": {
            "name": "cpu",
            "target": {
                "type": "Utilization",
                "averageUtilization": max(1, round(scaling.target_utilization * 100)),
            },
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": metadata["name"],
            },
            "minReplicas": min_replicas,
            "maxReplicas": scaling.effective_max_replicas,
            "metrics": [cpu, *more_metrics],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_SECONDS}},
        },
    }
