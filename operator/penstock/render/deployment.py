"""The Deployment of one stage: the user's container plus Penstock's init and sidecar containers."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.api.pipeline import Workload
from penstock.api.resources import filled_limits, rendered_requests
from penstock.contract.wire import ADMIN_PORT
from penstock.render.cache import disk_volume, redis_container
from penstock.render.gateway import (
    WARMUP_VOLUME,
    gateway_container,
    needs_gateway,
    warmup_key,
)
from penstock.render.meta import (
    SERVING_PORT_NAME,
    PipelineRef,
    metadata,
    selector_labels,
    stage_object_name,
    workload_labels,
)
from penstock.render.model import MODEL_VOLUME, model_volume, preload_container
from penstock.render.security import container_security_context
from penstock.render.settings import RenderSettings
from penstock.render.topology import topology_name
from penstock.render.workload import deployment, pod_spec, scrape_annotations


def _env(ref: PipelineRef, workload: Workload) -> list[dict[str, Any]]:
    stage = workload.stage
    env: list[dict[str, Any]] = [
        {"name": "PENSTOCK_PIPELINE", "value": ref.name},
        {"name": "PENSTOCK_STAGE", "value": stage.name},
        {"name": "PENSTOCK_NAMESPACE", "value": ref.namespace},
    ]
    if workload.variant is not None:
        env.append({"name": "PENSTOCK_VARIANT", "value": workload.variant})
    if stage.model:
        env.append({"name": "PENSTOCK_MODEL_DIR", "value": stage.model.mount_path})
    env += [item.to_wire() for item in stage.env or []]
    return env


def _resources(stage: Stage) -> dict[str, Any]:
    requests = rendered_requests(stage.resources)
    resources: dict[str, Any] = {"requests": {k: str(v) for k, v in sorted(requests.items())}}
    limits = filled_limits(stage.resources)  # a GPU's limit is its request
    if limits:
        resources["limits"] = {k: str(v) for k, v in sorted(limits.items())}
    return resources


def stage_container(ref: PipelineRef, workload: Workload, behind_gateway: bool) -> dict[str, Any]:
    stage = workload.stage
    port_name = "stage" if behind_gateway else SERVING_PORT_NAME
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage.image,
        "ports": [{"name": port_name, "containerPort": stage.port, "protocol": "TCP"}],
        "env": _env(ref, workload),
        "resources": _resources(stage),
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": stage.port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if stage.image_pull_policy:
        container["imagePullPolicy"] = stage.image_pull_policy
    if stage.command:
        container["command"] = list(stage.command)
    if stage.args:
        container["args"] = list(stage.args)
    if stage.model:
        container["volumeMounts"].append(
            {"name": MODEL_VOLUME, "mountPath": stage.model.mount_path, "readOnly": True}
        )
    return container


def sidecars(
    ref: PipelineRef, spec: PipelineSpec, workload: Workload, settings: RenderSettings
) -> list[dict[str, Any]]:
    """Containers that run beside the stage in every pod."""
    stage = workload.stage
    result = []
    if needs_gateway(spec, stage, settings):
        gateway = gateway_container(
            ref.name, ref.namespace, spec, stage, settings, workload.variant
        )
        result.append(gateway)
    if stage.cache and stage.cache.enabled:
        result.append(redis_container(ref.name, stage.cache, settings.redis_image))
    return result


def _volumes(
    ref: PipelineRef, spec: PipelineSpec, workload: Workload, settings: RenderSettings
) -> list[dict[str, Any]]:
    stage = workload.stage
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if needs_gateway(spec, stage, settings):
        volumes.append({"name": "gateway-tmp", "emptyDir": {"sizeLimit": "64Mi"}})
        if stage.model and stage.model.warmup and stage.model.warmup.requests:
            key = warmup_key(workload.component)
            volumes.append(
                {
                    "name": WARMUP_VOLUME,
                    "configMap": {
                        "name": topology_name(ref.name),
                        "items": [{"key": key, "path": key}],
                    },
                }
            )
    if stage.model:
        volumes.append(model_volume(stage.model))
        volumes.append({"name": "preload-tmp", "emptyDir": {"sizeLimit": "1Gi"}})
    if stage.cache and stage.cache.enabled:
        volumes.append(
            {"name": "cache-data", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
        )
        disk = disk_volume(ref.name, workload)
        if disk is not None:
            volumes.append(disk)
    return volumes


def stage_deployment(
    ref: PipelineRef, spec: PipelineSpec, workload: Workload, settings: RenderSettings
) -> dict[str, Any]:
    stage = workload.stage
    object_labels = workload_labels(ref.name, spec, workload)
    gateway = needs_gateway(spec, stage, settings)
    pod = pod_spec(
        [stage_container(ref, workload, gateway), *sidecars(ref, spec, workload, settings)],
        _volumes(ref, spec, workload, settings),
        initContainers=[preload_container(stage.model, settings.operator_image)]
        if stage.model
        else None,
        nodeSelector=dict(sorted(stage.node_selector.items())) if stage.node_selector else None,
        tolerations=[toleration.to_wire() for toleration in stage.tolerations or []],
        imagePullSecrets=[{"name": name} for name in spec.image_pull_secrets or []],
    )
    return deployment(
        metadata(ref, stage_object_name(ref.name, workload.component), object_labels),
        selector_labels(ref.name, workload.component),
        object_labels,
        scrape_annotations(ADMIN_PORT) if gateway else None,
        pod,
    )
