"""The ClusterIP Service in front of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec
from penstock.api.pipeline import Workload
from penstock.contract.wire import ADMIN_PORT
from penstock.render.gateway import needs_gateway
from penstock.render.meta import (
    SERVICE_PORT,
    PipelineRef,
    metadata,
    selector_labels,
    stage_object_name,
    workload_labels,
)
from penstock.render.settings import RenderSettings
from penstock.render.workload import http_ports, service


def stage_service(
    ref: PipelineRef, spec: PipelineSpec, workload: Workload, settings: RenderSettings
) -> dict[str, Any]:
    admin = ADMIN_PORT if needs_gateway(spec, workload.stage, settings) else None
    return service(
        metadata(
            ref,
            stage_object_name(ref.name, workload.component),
            workload_labels(ref.name, spec, workload),
        ),
        selector_labels(ref.name, workload.component),
        http_ports(SERVICE_PORT, admin),
    )
