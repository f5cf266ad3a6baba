"""Generate the Pipeline and PipelineRun CustomResourceDefinitions from the pydantic models.

Pydantic's JSON Schema is turned into a Kubernetes structural schema: $refs inlined,
Optional unions collapsed (absent means unset), titles dropped, descriptions kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from penstock.api.metadata import DNS1035_LABEL
from penstock.api.pipeline import PipelineSpec
from penstock.api.run import RUN_KIND, RUN_PLURAL, PipelineRunSpec, PipelineRunStatus
from penstock.api.status import PipelineStatus
from penstock.api.types import GROUP, KIND, PLURAL, VERSION

_DROP = {"title", "default", "propertyNames", "$defs"}
# Lists the apiserver treats as maps keyed by name: uniqueness and per-item server-side apply.
_LIST_MAP_KEYS = {("spec", "stages"): "name", ("spec", "stages", "*", "env"): "name"}
_LIST_SETS = {
    ("spec", "stages", "*", "dependsOn"),
    ("spec", "stages", "*", "cache", "keyHeaders"),
    ("spec", "imagePullSecrets"),
}


def _structural(node: Any, defs: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = dict(node)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").split("/")[-1]]
        merged = {**target, **schema}  # the field's own description wins over the model's
        return _structural(merged, defs, path)
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
        if len(branches) == 1:
            return _structural({**branches[0], **schema}, defs, path)
        if not branches or "x-kubernetes-preserve-unknown-fields" in schema:
            return _structural(schema, defs, path)
        raise ValueError(f"{'.'.join(path)}: unions other than Optional cannot be structural")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _structural(sub, defs, (*path, name)) for name, sub in value.items()}
        elif key == "patternProperties":
            # Structural schemas have no patternProperties: keys are checked by the operator.
            (value_schema,) = value.values()
            out["additionalProperties"] = _structural(value_schema, defs, (*path, "*"))
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _structural(value, defs, (*path, "*"))
        elif key == "additionalProperties":
            continue  # false is the default of a structural schema: unknown fields are pruned
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # OpenAPI v3.0 (what the apiserver speaks): a bound plus a boolean flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "maxLength" and schema.get("type") == "array":
            out["maxItems"] = value
        elif key == "anyOf":  # int-or-string
            out[key] = [
                {"type": b["type"]} for b in value if b.get("type") in ("integer", "string")
            ]
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if (
        not out.get("type")
        and not out.get("x-kubernetes-int-or-string")
        and "properties" not in out
    ):
        # Arbitrary JSON (e.g. a warmup body): keep it as given.
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array" and path in _LIST_MAP_KEYS:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = [_LIST_MAP_KEYS[path]]
    elif out.get("type") == "array" and path in _LIST_SETS:
        out["x-kubernetes-list-type"] = "set"
    return out


def openapi_schema(model: type[BaseModel], root: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}), (root,))


def _column(name: str, kind: str, path: str, description: str = "") -> dict[str, Any]:
    column = {"name": name, "type": kind, "jsonPath": path}
    if description:
        column["description"] = description
    return column


def _crd(
    kind: str,
    plural: str,
    short_name: str,
    description: str,
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "penstock", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["penstock"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        _column("Age", "date", ".metadata.creationTimestamp"),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "APIVersion of this object: "
                                    "penstock.dev/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": f"Kind: {kind}."},
                                "metadata": {
                                    "type": "object",
                                    # The only metadata a CRD may constrain; see api/metadata.py.
                                    "properties": {
                                        "name": {
                                            "type": "string",
                                            "maxLength": 63,
                                            "pattern": DNS1035_LABEL,
                                        }
                                    },
                                },
                                "spec": openapi_schema(spec_model, "spec"),
                                "status": openapi_schema(status_model, "status"),
                            },
                        }
                    },
                }
            ],
        },
    }


def pipeline_crd() -> dict[str, Any]:
    return _crd(
        KIND,
        PLURAL,
        "pl",
        "A Penstock inference pipeline: a DAG of stages "
        "served, cached, batched, autoscaled and cost-attributed as one.",
        PipelineSpec,
        PipelineStatus,
        [
            _column(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Whether every stage is serving.",
            ),
            _column("Stages", "string", ".status.stagesReady", "Ready stages over all stages."),
            _column("Bottleneck", "string", ".status.bottleneck", "The stage limiting throughput."),
            _column("Cost/h", "string", ".status.hourlyCost", "Cost of all stages per hour, USD."),
        ],
    )


def pipeline_run_crd() -> dict[str, Any]:
    return _crd(
        RUN_KIND,
        RUN_PLURAL,
        "plr",
        "A dataset pushed through a Pipeline: penstock batch as an Indexed Job, one shard per "
        "completion index, with items, failures, items/hour and cost in its status.",
        PipelineRunSpec,
        PipelineRunStatus,
        [
            _column("Pipeline", "string", ".spec.pipeline", "The Pipeline the items go through."),
            _column("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
            _column("Shards", "string", ".status.shards", "Shards done over all shards."),
            _column("Items", "integer", ".status.itemsDone", "Input lines with a record."),
            _column("Failed", "integer", ".status.itemsFailed", "Records holding an error."),
            _column("Items/h", "number", ".status.itemsPerHour", "Items done per hour."),
        ],
    )
