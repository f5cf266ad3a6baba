"""The Pipeline and PipelineRun field reference (Markdown), from the same schemas as the CRDs."""

from __future__ import annotations

from typing import Any

from penstock.api.crd import openapi_schema
from penstock.api.pipeline import PipelineSpec
from penstock.api.run import PipelineRunSpec
from penstock.contract.wire import RESERVED_STAGE_PORTS


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity (>= 0)"
    if "enum" in node:
        return " \\| ".join(str(value) for value in node["enum"])
    kind = node.get("type", "any JSON")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    return str(kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "min"),
        ("maximum", "max"),
        ("maxLength", "max length"),
        ("maxItems", "max items"),
    ):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "exclusiveMinimum" in node:
        parts.append(f"> {node['exclusiveMinimum']}")
    return ", ".join(parts)


def _rows(node: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}"
        described = " ".join(child.get("description", "").split())
        flag = " (required)" if name in required else ""
        rows.append(f"| `{child_path}`{flag} | {_type(child)} | {_bounds(child)} | {described} |")
        target = child.get("items", child) if child.get("type") == "array" else child
        suffix = "[]" if child.get("type") == "array" else ""
        if "properties" in target:
            rows += _rows(target, child_path + suffix, set(target.get("required", [])))
    return rows


def reference_markdown() -> str:
    spec = openapi_schema(PipelineSpec, "spec")
    lines = [
        "# Pipeline reference (penstock.dev/v1alpha1)",
        "",
        "Generated from the API models by `penstock crd --reference`; the same text is in",
        "`kubectl explain pipeline.spec`. Cross-field rules are listed after the table.",
        "",
        "| Field | Type | Bounds | Description |",
        "|---|---|---|---|",
        *_rows(spec, "spec", set(spec.get("required", []))),
        "",
        "## Cross-field rules",
        "",
        "Checked by the apiserver (CEL) where it can, and by `penstock validate` and the operator:",
        "",
        "- field names are camelCase exactly as listed (a snake_case name is an unknown field, which",
        "  the apiserver would drop); unknown fields are errors; types are strict (`true` is not a",
        '  number, `"8080"` is not a port);',
        "- quantities follow the Kubernetes grammar (`500m`, `2`, `1.5Gi`, `2E`, `1e3`), are never",
        "  negative and at most 2^63-1; `model.sizeLimit` and `cache.maxEntrySize` are positive,",
        "  `cache.maxMemory` at least 1Mi;",
        "- `metadata.name` is a DNS-1035 label (it begins Service names) and `metadata.namespace`",
        "  a DNS-1123 label, at most 63 characters each;",
        "- `resources` as a pod template takes them: names `cpu`, `memory`, `ephemeral-storage`,",
        "  `hugepages-<size>` or `<domain>/<name>`; a request at most its limit; an extended",
        "  resource such as `nvidia.com/gpu` in whole units with a limit equal to its request (set",
        "  to it when only the request is given); huge pages in whole pages, with cpu or memory;",
        "- the stage names `router` and `input` are reserved (the router's objects, the request",
        "  envelope's `input` key);",
        "- stage names are unique; `dependsOn` names existing stages, never the stage itself;",
        "- the stages form a DAG (a cycle is reported with its path, e.g. `a -> b -> a`);",
        "- `output` names a stage; without it the pipeline must have exactly one stage that",
        "  nothing depends on;",
        "- `scaling.minReplicas <= scaling.maxReplicas`; a streaming stage cannot be batched;",
        f"- ports {_ports()} are reserved for Penstock's sidecars;",
        "- stages the output does not depend on are reported as warnings (the router skips them).",
        "",
        *_run_reference(),
    ]
    return "\n".join(lines)


def _run_reference() -> list[str]:
    spec = openapi_schema(PipelineRunSpec, "spec")
    return [
        "# PipelineRun reference (penstock.dev/v1alpha1)",
        "",
        "A dataset through a Pipeline on the cluster: the operator runs `penstock batch` as an",
        "Indexed Job of `parallelism` shards (`kubectl get plr` shows phase, shards, items,",
        "failures and items/hour; deleting the PipelineRun deletes the Job and stops it). A shard",
        "that cannot read its input or write its output fails the run at once with the reason in",
        "the `Failed` condition (no retries, never a crash loop); a bad line is an error record.",
        "",
        "| Field | Type | Bounds | Description |",
        "|---|---|---|---|",
        *_rows(spec, "spec", set(spec.get("required", []))),
        "",
    ]


def _ports() -> str:
    *first, last = sorted(RESERVED_STAGE_PORTS)
    return f"{', '.join(map(str, first))} and {last}"
