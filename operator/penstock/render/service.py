"""The ClusterIP Service in front of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.contract.wire import ADMIN_PORT
from penstock.render.gateway import needs_gateway
from penstock.render.meta import (
    SERVICE_PORT,
    PipelineRef,
    labels,
    metadata,
    selector_labels,
    stage_object_name,
)
from penstock.render.settings import RenderSettings
from penstock.render.workload import http_ports, service


def stage_service(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> dict[str, Any]:
    admin = ADMIN_PORT if needs_gateway(spec, stage, settings) else None
    return service(
        metadata(
            ref,
            stage_object_name(ref.name, stage.name),
            labels(ref.name, spec, stage.name, stage.name),
        ),
        selector_labels(ref.name, stage.name),
        http_ports(SERVICE_PORT, admin),
    )
