"""The Deployment of one stage: the user's container plus Penstock's init and sidecar containers."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.api.resources import filled_limits, rendered_requests
from penstock.contract.wire import ADMIN_PORT
from penstock.render.cache import redis_container
from penstock.render.gateway import (
    WARMUP_VOLUME,
    gateway_container,
    needs_gateway,
    warmup_key,
)
from penstock.render.meta import (
    SERVING_PORT_NAME,
    PipelineRef,
    labels,
    metadata,
    selector_labels,
    stage_object_name,
)
from penstock.render.model import MODEL_VOLUME, model_volume, preload_container
from penstock.render.security import container_security_context, pod_security_context
from penstock.render.settings import RenderSettings
from penstock.render.topology import topology_name


def _env(ref: PipelineRef, stage: Stage) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PENSTOCK_PIPELINE", "value": ref.name},
        {"name": "PENSTOCK_STAGE", "value": stage.name},
        {"name": "PENSTOCK_NAMESPACE", "value": ref.namespace},
    ]
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


def stage_container(ref: PipelineRef, stage: Stage, behind_gateway: bool) -> dict[str, Any]:
    port_name = "stage" if behind_gateway else SERVING_PORT_NAME
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage.image,
        "ports": [{"name": port_name, "containerPort": stage.port, "protocol": "TCP"}],
        "env": _env(ref, stage),
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
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> list[dict[str, Any]]:
    """Containers that run beside the stage in every pod."""
    result = []
    if needs_gateway(spec, stage, settings):
        result.append(gateway_container(ref.name, ref.namespace, spec, stage, settings))
    if stage.cache and stage.cache.enabled:
        result.append(redis_container(ref.name, stage.cache, settings.redis_image))
    return result


def _volumes(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if needs_gateway(spec, stage, settings):
        volumes.append({"name": "gateway-tmp", "emptyDir": {"sizeLimit": "64Mi"}})
        if stage.model and stage.model.warmup and stage.model.warmup.requests:
            volumes.append(
                {
                    "name": WARMUP_VOLUME,
                    "configMap": {
                        "name": topology_name(ref.name),
                        "items": [{"key": warmup_key(stage.name), "path": warmup_key(stage.name)}],
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
    return volumes


def _template_metadata(object_labels: dict[str, str], gateway: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": object_labels}
    if gateway:
        # The widespread scrape convention; a PodMonitor can select the `admin` port instead.
        meta["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(ADMIN_PORT),
            "prometheus.io/path": "/metrics",
        }
    return meta


def stage_deployment(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> dict[str, Any]:
    object_labels = labels(ref.name, spec, stage.name, stage.name)
    gateway = needs_gateway(spec, stage, settings)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [stage_container(ref, stage, gateway), *sidecars(ref, spec, stage, settings)],
        "volumes": _volumes(ref, spec, stage, settings),
        "terminationGracePeriodSeconds": 30,
    }
    if stage.model:
        pod_spec["initContainers"] = [preload_container(stage.model, settings.operator_image)]
    if stage.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(stage.node_selector.items()))
    if stage.tolerations:
        pod_spec["tolerations"] = [toleration.to_wire() for toleration in stage.tolerations]
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ref, stage_object_name(ref.name, stage.name), object_labels),
        "spec": {
            # No replicas: the HorizontalPodAutoscaler owns that field.
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(ref.name, stage.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": _template_metadata(object_labels, gateway),
                "spec": pod_spec,
            },
        },
    }
