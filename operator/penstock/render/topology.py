"""The per-pipeline ConfigMap describing the stage graph, read by the router."""

from __future__ import annotations

import json
from typing import Any

from penstock.api import PipelineSpec
from penstock.render.meta import PipelineRef, labels, metadata, object_name
from penstock.render.service import stage_url


def topology_name(pipeline: str) -> str:
    return object_name(pipeline, "topology")


def topology(ref: PipelineRef, spec: PipelineSpec) -> dict[str, Any]:
    document = {
        "pipeline": ref.name,
        "namespace": ref.namespace,
        "output": spec.output_stage,
        "latencyBudgetMs": spec.latency_budget_ms,
        "stages": [
            {
                "name": stage.name,
                "dependsOn": stage.dependencies,
                "url": stage_url(ref, stage.name),
                "stream": stage.stream,
                "timeoutSeconds": stage.timeout_seconds,
            }
            for stage in spec.stages
        ],
    }
    data = {"topology.json": json.dumps(document, indent=2, sort_keys=True) + "\n"}
    for stage in spec.stages:
        warmup = stage.model.warmup if stage.model else None
        if warmup and warmup.requests:
            # Mounted into the gateway as its warmup request body.
            data[f"warmup-{stage.name}.json"] = warmup.body_document()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            ref, topology_name(ref.name), labels(ref.name, spec, "topology", None)
        ),
        "data": data,
    }
