"""The per-pipeline ConfigMap: the topology document the router runs (penstock.contract.topology)
and the stages' warmup bodies."""

from __future__ import annotations

import json
from typing import Any

from penstock.api import PipelineSpec
from penstock.contract.topology import Topology, target
from penstock.render.gateway import warmup_key
from penstock.render.meta import PipelineRef, labels, metadata, object_name, stage_url


def topology_name(pipeline: str) -> str:
    return object_name(pipeline, "topology")


def topology(ref: PipelineRef, spec: PipelineSpec) -> dict[str, Any]:
    urls = {
        target(workload.stage.name, workload.variant): stage_url(ref, workload.component)
        for workload in spec.workloads()
    }
    document = Topology.from_spec(ref.name, ref.namespace, spec, urls).to_document()
    data = {"topology.json": json.dumps(document, indent=2, sort_keys=True) + "\n"}
    for workload in spec.workloads():
        model = workload.stage.model
        warmup = model.warmup if model else None
        if warmup and warmup.requests:
            # Mounted into the gateway as its warmup request body.
            data[warmup_key(workload.component)] = warmup.body_document()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            ref, topology_name(ref.name), labels(ref.name, spec, "topology", None)
        ),
        "data": data,
    }
