"""Names, labels and owner references shared by every rendered object."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from penstock.api import API_VERSION, KIND, PipelineSpec
from penstock.api.pipeline import Workload
from penstock.contract.wire import MANAGED_BY

FIELD_MANAGER = MANAGED_BY
MAX_NAME = 63
# The port name a stage's Service targets. Whatever container owns it receives the traffic:
# the gateway sidecar when the stage has one, else the stage container itself.
SERVING_PORT_NAME = "http"


@dataclass(frozen=True)
class PipelineRef:
    """The identity of the Pipeline being rendered; uid is None outside a cluster."""

    name: str
    namespace: str
    uid: str | None = None


def object_name(*parts: str) -> str:
    """Join parts with '-'; past 63 characters, truncate and add a stable hash suffix."""
    name = "-".join(parts)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def stage_object_name(pipeline: str, stage: str) -> str:
    return object_name(pipeline, stage)


def selector_labels(pipeline: str, component: str) -> dict[str, str]:
    """Immutable subset used in Deployment selectors and Service selectors."""
    return {
        "app.kubernetes.io/instance": pipeline,
        "app.kubernetes.io/component": component,
        "penstock.dev/pipeline": pipeline,
    }


def labels(
    pipeline: str,
    spec: PipelineSpec,
    component: str,
    stage: str | None,
    variant: str | None = None,
) -> dict[str, str]:
    """The DESIGN.md label contract; cost tools and Grafana group by these."""
    result = {
        "app.kubernetes.io/name": "penstock",
        **selector_labels(pipeline, component),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": pipeline,
        "penstock.dev/cost-center": spec.cost_center,
        "penstock.dev/team": spec.team,
    }
    if stage is not None:
        result["penstock.dev/stage"] = stage
    if variant is not None:
        result["penstock.dev/variant"] = variant
    return dict(sorted(result.items()))


def metadata(
    ref: PipelineRef,
    name: str,
    object_labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ref.namespace, "labels": object_labels}
    if annotations:
        meta["annotations"] = annotations
    if ref.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": ref.name,
                "uid": ref.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


SERVICE_PORT = 80  # every Service of a Pipeline: stages and router


def workload_labels(pipeline: str, spec: PipelineSpec, workload: Workload) -> dict[str, str]:
    return labels(pipeline, spec, workload.component, workload.stage.name, workload.variant)


def stage_url(ref: PipelineRef, stage: str) -> str:
    """The URL of a stage's Service inside the cluster."""
    return f"http://{stage_object_name(ref.name, stage)}.{ref.namespace}.svc:{SERVICE_PORT}"
