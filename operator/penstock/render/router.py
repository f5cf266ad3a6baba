"""The pipeline's router: Deployment, Service and HPA running `penstock router` on the topology."""

from __future__ import annotations

import hashlib
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.features import Scaling
from penstock.api.resources import filled_limits
from penstock.contract.wire import ADMIN_PORT, ROUTER_PORT
from penstock.render.collector import collector_endpoint, resource_attributes
from penstock.render.meta import (
    SERVICE_PORT,
    SERVING_PORT_NAME,
    PipelineRef,
    labels,
    metadata,
    object_name,
    selector_labels,
)
from penstock.render.security import container_security_context
from penstock.render.settings import RenderSettings
from penstock.render.workload import (
    autoscaler,
    deployment,
    http_ports,
    pod_spec,
    scrape_annotations,
    service,
)

COMPONENT = "router"
TOPOLOGY_DIR = "/etc/penstock/topology"


def router_name(pipeline: str) -> str:
    return object_name(pipeline, COMPONENT)


def router_url(ref: PipelineRef) -> str:
    return f"http://{router_name(ref.name)}.{ref.namespace}.svc:{SERVICE_PORT}"


def _scaling(spec: PipelineSpec) -> Scaling:
    return spec.router.scaling if spec.router and spec.router.scaling else Scaling()


def router_deployment(
    ref: PipelineRef, spec: PipelineSpec, settings: RenderSettings, topology_json: str
) -> dict[str, Any]:
    object_labels = labels(ref.name, spec, COMPONENT, None)
    env = [
        {"name": "PENSTOCK_ROUTER_LISTEN", "value": f"0.0.0.0:{ROUTER_PORT}"},
        {"name": "PENSTOCK_ROUTER_ADMIN_LISTEN", "value": f"0.0.0.0:{ADMIN_PORT}"},
        {"name": "PENSTOCK_ROUTER_TOPOLOGY", "value": f"{TOPOLOGY_DIR}/topology.json"},
    ]
    if spec.tracing_enabled and spec.tracing:
        env.append(
            {"name": "PENSTOCK_ROUTER_OTLP_ENDPOINT", "value": collector_endpoint(ref.namespace)}
        )
        env.append(
            {"name": "PENSTOCK_ROUTER_SAMPLING_RATIO", "value": str(spec.tracing.sampling_ratio)}
        )
        env.append(resource_attributes(ref.namespace, spec))
    resources: dict[str, Any] = {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    if spec.router and spec.router.resources:
        resources = spec.router.resources.to_wire()
        if limits := filled_limits(spec.router.resources):  # a GPU's limit is its request
            resources["limits"] = limits
    container = {
        "name": COMPONENT,
        "image": settings.operator_image,
        "command": ["penstock"],
        "args": ["router"],
        "ports": [
            {"name": SERVING_PORT_NAME, "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": resources,
        "livenessProbe": {"httpGet": {"path": "/live", "port": "admin"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "admin"}, "periodSeconds": 2},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "topology", "mountPath": TOPOLOGY_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    # A changed topology rolls the router, which reads it at start.
    digest = hashlib.sha256(topology_json.encode()).hexdigest()[:16]
    volumes = [
        {
            "name": "topology",
            "configMap": {
                "name": object_name(ref.name, "topology"),
                "items": [{"key": "topology.json", "path": "topology.json"}],
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    return deployment(
        metadata(ref, router_name(ref.name), object_labels),
        selector_labels(ref.name, COMPONENT),
        object_labels,
        {"penstock.dev/topology-hash": digest, **scrape_annotations(ADMIN_PORT)},
        pod_spec([container], volumes),
    )


def router_service(ref: PipelineRef, spec: PipelineSpec) -> dict[str, Any]:
    return service(
        metadata(ref, router_name(ref.name), labels(ref.name, spec, COMPONENT, None)),
        selector_labels(ref.name, COMPONENT),
        http_ports(SERVICE_PORT, ADMIN_PORT),
    )


def router_hpa(ref: PipelineRef, spec: PipelineSpec) -> dict[str, Any]:
    scaling = _scaling(spec)
    name = router_name(ref.name)
    meta = metadata(ref, name, labels(ref.name, spec, COMPONENT, None))
    return autoscaler(meta, scaling, scaling.min_replicas)
