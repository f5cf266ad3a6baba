"""The ClusterIP Service in front of one stage."""

from __future__ import annotations

from typing import Any

from penstock.api import PipelineSpec, Stage
from penstock.render.deployment import SERVING_PORT_NAME
from penstock.render.meta import PipelineRef, labels, metadata, selector_labels, stage_object_name

SERVICE_PORT = 80


def stage_service(ref: PipelineRef, spec: PipelineSpec, stage: Stage) -> dict[str, Any]:
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
            "ports": [
                {
                    "name": SERVING_PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": SERVING_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def stage_url(ref: PipelineRef, stage: str) -> str:
    return f"http://{stage_object_name(ref.name, stage)}.{ref.namespace}.svc:{SERVICE_PORT}"
