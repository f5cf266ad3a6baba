"""Pure rendering: a validated Pipeline spec in, the list of manifests (plain dicts) out. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from penstock.api import PipelineSpec
from penstock.render.cache import cache_secret, disk_claims, managed_redis
from penstock.render.deployment import stage_deployment
from penstock.render.hpa import stage_hpa
from penstock.render.meta import FIELD_MANAGER, PipelineRef
from penstock.render.router import router_deployment, router_hpa, router_service
from penstock.render.service import stage_service
from penstock.render.settings import RenderSettings
from penstock.render.topology import topology

__all__ = ["FIELD_MANAGER", "PipelineRef", "RenderSettings", "render_children", "render_secret"]


def render_children(
    ref: PipelineRef,
    spec: PipelineSpec,
    settings: RenderSettings,
    replica_floors: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Every object the operator keeps applied for this Pipeline (the Secret aside).

    replica_floors: per workload (a stage, or <stage>-<variant>), the throughput tuner's
    recommended replicas (HPA minReplicas).
    """
    floors = replica_floors or {}
    config = topology(ref, spec)
    manifests: list[dict[str, Any]] = [config]
    manifests += disk_claims(ref, spec)
    for workload in spec.workloads():
        manifests.append(stage_deployment(ref, spec, workload, settings))
        manifests.append(stage_service(ref, spec, workload, settings))
        manifests.append(stage_hpa(ref, spec, workload, floors.get(workload.component)))
    manifests.append(router_deployment(ref, spec, settings, config["data"]["topology.json"]))
    manifests.append(router_service(ref, spec))
    manifests.append(router_hpa(ref, spec))
    manifests += managed_redis(ref, spec, settings.redis_image)
    return manifests


def render_secret(ref: PipelineRef, spec: PipelineSpec, password: str) -> dict[str, Any] | None:
    """The cache password Secret, created once when any stage caches; None otherwise."""
    return cache_secret(ref, spec, password) if spec.cache_used else None
