"""The ClusterIP Service in front of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.contract.wire import ADMIN_PORT
from penstock.render.gateway import needs_gateway
from penstock.render.meta import (
    SERVING_PORT_NAME,
    PipelineRef,
    labels,
    metadata,
    selector_labels,
    stage_object_name,
)
from penstock.render.settings import RenderSettings

SERVICE_PORT = 80


def stage_service(
    ref: PipelineRef, spec: PipelineSpec, stage: Stage, settings: RenderSettings
) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [
        {
            "name": SERVING_PORT_NAME,
            "port": SERVICE_PORT,
            "targetPort": SERVING_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    if needs_gateway(spec, stage, settings):
        ports.append(
            {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"}
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            ref,
            stage_object_name(ref.name, stage.name),
            labels(ref.name, spec, stage.name, stage.name),
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ref.name, stage.name),
            "ports": ports,
        },
    }


def stage_url(ref: PipelineRef, stage: str) -> str:
    return f"http://{stage_object_name(ref.name, stage)}.{ref.namespace}.svc:{SERVICE_PORT}"
