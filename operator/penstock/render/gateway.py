"""The gateway sidecar: the stage's front door when it caches, batches, traces or warms up.

It takes over the `http` port name, so the stage's Service reaches it instead of the stage.
"""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.api.cost import replica_hourly_cost
from penstock.api.types import parse_quantity
from penstock.render.cache import REDIS_PORT, password_env
from penstock.render.collector import collector_endpoint, resource_attributes
from penstock.render.security import container_security_context
from penstock.render.settings import RenderSettings

GATEWAY_PORT = 9091
ADMIN_PORT = 9090
WARMUP_DIR = "/etc/penstock/warmup"
WARMUP_VOLUME = "warmup"


def warmup_key(stage: str) -> str:
    return f"warmup-{stage}.json"


def needs_gateway(spec: PipelineSpec, stage: Stage, settings: RenderSettings) -> bool:
    if settings.measure_every_stage:
        return True
    warmup = (
        stage.model is not None
        and stage.model.warmup is not None
        and stage.model.warmup.requests > 0
    )
    return stage.cache_enabled or stage.batching is not None or spec.tracing_enabled or warmup


def _env(
    pipeline: str, namespace: str, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> list[dict[str, Any]]:
    values: dict[str, str] = {
        "LISTEN": f"0.0.0.0:{GATEWAY_PORT}",
        "ADMIN_LISTEN": f"0.0.0.0:{ADMIN_PORT}",
        "UPSTREAM": f"http://127.0.0.1:{stage.port}",
        "PIPELINE": pipeline,
        "STAGE": stage.name,
        "NAMESPACE": namespace,
        "COST_CENTER": spec.cost_center,
        "HOURLY_COST": format(replica_hourly_cost(stage, settings.prices).normalize(), "f"),
        "TIMEOUT_SECONDS": str(stage.timeout_seconds),
        "STAGE_IMAGE": stage.image,
    }
    if stage.model:
        values["MODEL_VERSION"] = stage.model.sha256 or stage.model.uri
        warmup = stage.model.warmup
        if warmup and warmup.requests:
            values["WARMUP_REQUESTS"] = str(warmup.requests)
            values["WARMUP_PATH"] = warmup.path
            values["WARMUP_BODY"] = f"{WARMUP_DIR}/{warmup_key(stage.name)}"
    if stage.cache and stage.cache.enabled:
        values["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
        values["CACHE_TTL_SECONDS"] = str(stage.cache.ttl_seconds)
        values["CACHE_MAX_ENTRY_BYTES"] = str(int(parse_quantity(stage.cache.max_entry_size)))
        if stage.cache.key_headers is not None:  # unset: the gateway's default
            values["CACHE_KEY_HEADERS"] = ",".join(stage.cache.key_headers)
    if stage.batching:
        values["BATCH_MAX_SIZE"] = str(stage.batching.max_batch_size)
        values["BATCH_MAX_LATENCY_MS"] = str(stage.batching.max_latency_ms)
        values["BATCH_PATH"] = stage.batching.path
    if spec.tracing_enabled and spec.tracing:
        values["OTLP_ENDPOINT"] = collector_endpoint(namespace)
        values["SAMPLING_RATIO"] = str(spec.tracing.sampling_ratio)
    env = [{"name": f"PENSTOCK_GATEWAY_{key}", "value": value} for key, value in values.items()]
    if spec.tracing_enabled:
        env.append(resource_attributes(namespace, spec))
    if stage.cache and stage.cache.enabled:
        env.append(password_env(pipeline))
    return env


def gateway_container(
    pipeline: str, namespace: str, spec: PipelineSpec, stage: Stage, settings: RenderSettings
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
        "env": _env(pipeline, namespace, spec, stage, settings),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
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
    return container
