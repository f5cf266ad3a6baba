"""The gateway sidecar: the stage's front door when it caches, batches, traces or warms up.

It takes over the `http` port name, so the stage's Service reaches it instead of the stage.
"""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.api.pipeline import Workload
from penstock.api.types import parse_quantity
from penstock.contract.gateway import Placement, gateway_args
from penstock.contract.wire import ADMIN_PORT, GATEWAY_PORT, REDIS_PORT
from penstock.render.cache import DISK_CACHE_DIR, DISK_VOLUME, managed_redis_url, password_env
from penstock.render.collector import collector_endpoint, resource_attributes
from penstock.render.meta import PipelineRef, stage_url
from penstock.render.security import container_security_context
from penstock.render.settings import RenderSettings

WARMUP_DIR = "/etc/penstock/warmup"
WARMUP_VOLUME = "warmup"


def warmup_key(component: str) -> str:
    """The ConfigMap key of a workload's warmup body (component: <stage>[-<variant>])."""
    return f"warmup-{component}.json"


def needs_gateway(spec: PipelineSpec, stage: Stage, settings: RenderSettings) -> bool:
    if settings.measure_every_stage:
        return True
    warmup = (
        stage.model is not None
        and stage.model.warmup is not None
        and stage.model.warmup.requests > 0
    )
    return stage.cache_enabled or stage.batching is not None or spec.tracing_enabled or warmup


def _embedder_url(namespace: str, pipeline: str, stage: Stage) -> str | None:
    semantic = stage.cache.semantic if stage.cache else None
    if semantic is None:
        return None
    # The embedder's Service: through its own gateway, so repeated texts hit its cache.
    return stage_url(PipelineRef(pipeline, namespace), semantic.embedder)


def _env(
    pipeline: str,
    namespace: str,
    spec: PipelineSpec,
    stage: Stage,
    settings: RenderSettings,
    variant: str | None,
) -> list[dict[str, Any]]:
    where = Placement(
        listen=f"0.0.0.0:{GATEWAY_PORT}",
        admin_listen=f"0.0.0.0:{ADMIN_PORT}",
        upstream=f"http://127.0.0.1:{stage.port}",
        namespace=namespace,
        redis_url=f"redis://127.0.0.1:{REDIS_PORT}/0",
        warmup_body_file=f"{WARMUP_DIR}/{warmup_key(Workload(stage, variant).component)}",
        otlp_endpoint=collector_endpoint(namespace),
        shared_cache=True,
        embedder_url=_embedder_url(namespace, pipeline, stage),
        managed_redis_url=managed_redis_url(PipelineRef(pipeline, namespace)),
        disk_cache_dir=f"{DISK_CACHE_DIR}/entries",
    )
    env: list[dict[str, Any]] = []
    env += gateway_args(pipeline, spec, stage, settings.prices, where, variant).to_env()
    if spec.tracing_enabled:
        env.append(resource_attributes(namespace, spec))
    if stage.cache and stage.cache.enabled:
        env.append(password_env(pipeline))
        shared = stage.cache.shared
        if shared:
            # Signs the shared tier's entries: the Pipeline's own cache Secret, never the user's.
            env.append(password_env(pipeline, "SHARED_CACHE_KEY"))
            if shared.managed:
                env.append(password_env(pipeline, "SHARED_REDIS_PASSWORD"))
            elif shared.password_secret:
                ref = shared.password_secret
                selector: dict[str, Any] = {"name": ref.name, "key": ref.key}
                if ref.optional is not None:
                    selector["optional"] = ref.optional
                env.append(
                    {"name": "SHARED_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": selector}}
                )
    return env


def _resources(stage: Stage) -> dict[str, Any]:
    """The gateway's own needs, plus what its in-process cache tier may hold."""
    memory = stage.cache.memory if stage.cache and stage.cache.enabled else None
    tier_mib = -(-int(parse_quantity(memory.max_size)) // (1 << 20)) if memory else 0
    return {
        "requests": {"cpu": "50m", "memory": f"{64 + tier_mib}Mi"},
        "limits": {"memory": f"{256 + tier_mib}Mi"},
    }


def gateway_container(
    pipeline: str,
    namespace: str,
    spec: PipelineSpec,
    stage: Stage,
    settings: RenderSettings,
    variant: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "gateway",
        "image": settings.operator_image,
        "command": ["penstock"],
        "args": ["gateway"],
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": _env(pipeline, namespace, spec, stage, settings, variant),
        "resources": _resources(stage),
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "admin"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Ready only once the stage answers /healthz and the warmup requests were served.
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "admin"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "gateway-tmp", "mountPath": "/tmp"}],
    }
    if stage.model and stage.model.warmup and stage.model.warmup.requests:
        container["volumeMounts"].append(
            {"name": WARMUP_VOLUME, "mountPath": WARMUP_DIR, "readOnly": True}
        )
    if stage.cache and stage.cache.enabled and stage.cache.disk:
        container["volumeMounts"].append({"name": DISK_VOLUME, "mountPath": DISK_CACHE_DIR})
    return container
