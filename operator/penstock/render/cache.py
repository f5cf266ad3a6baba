"""The Redis cache sidecar, the Secret holding its password, and the disk tier's claim."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.features import MANAGED_REDIS_COMPONENT, Cache, DiskTier
from penstock.api.pipeline import Workload
from penstock.api.types import parse_quantity
from penstock.contract.wire import REDIS_PORT
from penstock.render.meta import PipelineRef, labels, metadata, object_name, selector_labels
from penstock.render.security import container_security_context
from penstock.render.workload import deployment, pod_spec, service

PASSWORD_KEY = "redis-password"
DISK_VOLUME = "disk-cache"
DISK_CACHE_DIR = "/var/cache/penstock"
_MI = 2**20


def cache_secret_name(pipeline: str) -> str:
    return object_name(pipeline, "cache")


def cache_secret(ref: PipelineRef, spec: PipelineSpec, password: str) -> dict[str, Any]:
    """Created once by the operator and never re-applied, so the password is never rotated."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            ref, cache_secret_name(ref.name), labels(ref.name, spec, "cache", None)
        ),
        "type": "Opaque",
        "stringData": {PASSWORD_KEY: password},
    }


def password_env(pipeline: str, name: str = "REDIS_PASSWORD") -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": cache_secret_name(pipeline), "key": PASSWORD_KEY}},
    }


def redis_container(pipeline: str, cache: Cache, image: str) -> dict[str, Any]:
    """Redis on loopback only: reachable by containers of the same pod, nothing else."""
    return _redis(
        pipeline, int(parse_quantity(cache.max_memory)), cache.eviction_policy, image, loopback=True
    )


def _redis(
    pipeline: str, max_bytes: int, policy: str, image: str, *, loopback: bool
) -> dict[str, Any]:
    # Redis needs headroom over maxmemory for buffers and fragmentation.
    limit_mi = math.ceil(max_bytes * 1.25 / _MI) + 32
    # Protected mode refuses clients beyond loopback even with a password: off for the
    # managed Redis, which answers the Pipeline's pods and asks each for the password.
    bind = ["127.0.0.1", "-::1"] if loopback else ["0.0.0.0", "-::"]
    return {
        "name": "cache",
        "image": image,
        "command": ["redis-server"],
        "args": [
            "--bind",
            *bind,
            "--port",
            str(REDIS_PORT),
            "--protected-mode",
            "yes" if loopback else "no",
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--maxmemory",
            str(max_bytes),
            "--maxmemory-policy",
            policy,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/data",
        ],
        "env": [password_env(pipeline)],
        "resources": {
            "requests": {"cpu": "50m", "memory": f"{math.ceil(max_bytes / _MI) + 16}Mi"},
            "limits": {"memory": f"{limit_mi}Mi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "cache-data", "mountPath": "/data"}],
    }


def disk_claim_name(pipeline: str, component: str, disk: DiskTier) -> str:
    """Named after what cannot change in a bound claim: another size, class or mode is a new
    claim (and the Deployment rolls to it), never a patch the apiserver refuses."""
    fixed = f"{parse_quantity(disk.size)}/{disk.storage_class_name or ''}/{disk.access_mode}"
    return object_name(pipeline, component, "cache", hashlib.sha256(fixed.encode()).hexdigest()[:8])


def disk_claims(ref: PipelineRef, spec: PipelineSpec) -> list[dict[str, Any]]:
    """One PersistentVolumeClaim per workload whose stage has a disk tier."""
    claims = []
    for workload in spec.workloads():
        stage = workload.stage
        disk = stage.cache.disk if stage.cache and stage.cache.enabled else None
        if disk is None:
            continue
        claim_spec: dict[str, Any] = {
            "accessModes": [disk.access_mode],
            "resources": {"requests": {"storage": str(disk.size)}},
        }
        if disk.storage_class_name:
            claim_spec["storageClassName"] = disk.storage_class_name
        name = disk_claim_name(ref.name, workload.component, disk)
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata(
                    ref, name, labels(ref.name, spec, "cache", stage.name, workload.variant)
                ),
                "spec": claim_spec,
            }
        )
    return claims


def disk_volume(pipeline: str, workload: Workload) -> dict[str, Any] | None:
    stage = workload.stage
    disk = stage.cache.disk if stage.cache and stage.cache.enabled else None
    if disk is None:
        return None
    claim = disk_claim_name(pipeline, workload.component, disk)
    return {"name": DISK_VOLUME, "persistentVolumeClaim": {"claimName": claim}}


def managed_redis_name(pipeline: str) -> str:
    return object_name(pipeline, MANAGED_REDIS_COMPONENT)


def managed_redis_url(ref: PipelineRef) -> str:
    return f"redis://{managed_redis_name(ref.name)}.{ref.namespace}.svc:{REDIS_PORT}/0"


def managed_redis(ref: PipelineRef, spec: PipelineSpec, image: str) -> list[dict[str, Any]]:
    """The Deployment and Service of the Redis the Pipeline's managed shared tiers use (one
    replica: a cache; while it restarts the tier fails open); none when no stage has one."""
    shares = [
        int(parse_quantity(stage.cache.shared.managed.max_memory))
        for stage in spec.stages
        if stage.cache and stage.cache.enabled and stage.cache.shared and stage.cache.shared.managed
    ]
    if not shares:
        return []
    name = managed_redis_name(ref.name)
    object_labels = labels(ref.name, spec, MANAGED_REDIS_COMPONENT, None)
    selector = selector_labels(ref.name, MANAGED_REDIS_COMPONENT)
    container = _redis(ref.name, sum(shares), "allkeys-lru", image, loopback=False)
    container["ports"] = [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}]
    container["readinessProbe"] = {"tcpSocket": {"port": "redis"}, "periodSeconds": 5}
    data = {"name": "cache-data", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    pod = pod_spec([container], [data])
    ports = [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}]
    return [
        deployment(metadata(ref, name, object_labels), selector, object_labels, None, pod, 1),
        service(metadata(ref, name, object_labels), selector, ports),
    ]
