"""The Deployment of one stage: the user's container plus Penstock's init and sidecar containers."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.render.cache import redis_container
from penstock.render.meta import (
    PipelineRef,
    labels,
    metadata,
    selector_labels,
    stage_object_name,
)
from penstock.render.model import MODEL_VOLUME, model_volume, preload_container
from penstock.render.security import container_security_context, pod_security_context
from penstock.render.settings import RenderSettings

DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
# The port name the stage's Service targets. Whatever container owns it receives the traffic:
# today the stage container; a proxy sidecar takes it over by claiming the name.
SERVING_PORT_NAME = "http"


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
    resources: dict[str, Any] = {"requests": dict(DEFAULT_REQUESTS)}
    if stage.resources and stage.resources.requests:
        resources["requests"] = {k: str(v) for k, v in sorted(stage.resources.requests.items())}
    if stage.resources and stage.resources.limits:
        resources["limits"] = {k: str(v) for k, v in sorted(stage.resources.limits.items())}
    return resources


def stage_container(ref: PipelineRef, stage: Stage) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage.image,
        "ports": [{"name": SERVING_PORT_NAME, "containerPort": stage.port, "protocol": "TCP"}],
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


def sidecars(ref: PipelineRef, stage: Stage, settings: RenderSettings) -> list[dict[str, Any]]:
    """Containers that run beside the stage in every pod."""
    result = []
    if stage.cache and stage.cache.enabled:
        result.append(redis_container(ref.name, stage.cache, settings.redis_image))
    return result


def _volumes(stage: Stage) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if stage.model:
        volumes.append(model_volume(stage.model))
        volumes.append({"name": "preload-tmp", "emptyDir": {"sizeLimit": "1Gi"}})
    if stage.cache and stage.cache.enabled:
        volumes.append(
            {"name": "cache-data", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
        )
    return volumes


def stage_deployment(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> dict[str, Any]:
    object_labels = labels(ref.name, spec, stage.name, stage.name)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [stage_container(ref, stage), *sidecars(ref, stage, settings)],
        "volumes": _volumes(stage),
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
                "metadata": {"labels": object_labels},
                "spec": pod_spec,
            },
        },
    }
