"""The Redis cache sidecar and the Secret holding its password."""

from __future__ import annotations

import math
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.features import Cache
from penstock.api.types import parse_quantity
from penstock.contract.wire import REDIS_PORT
from penstock.render.meta import PipelineRef, labels, metadata, object_name
from penstock.render.security import container_security_context

PASSWORD_KEY = "redis-password"
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
    max_bytes = int(parse_quantity(cache.max_memory))
    # Redis needs headroom over maxmemory for buffers and fragmentation.
    limit_mi = math.ceil(max_bytes * 1.25 / _MI) + 32
    return {
        "name": "cache",
        "image": image,
        "command": ["redis-server"],
        "args": [
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            str(REDIS_PORT),
            "--protected-mode",
            "yes",
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--maxmemory",
            str(max_bytes),
            "--maxmemory-policy",
            cache.eviction_policy,
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
