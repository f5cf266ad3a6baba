"""The CRD is generated from the models, current in crds/, structural and self-documenting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from penstock.api.crd import pipeline_crd
from penstock.cli import main

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "pipelines.penstock.dev.yaml"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = pipeline_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_checked_in_crd_is_current(capsys: Any) -> None:
    assert main(["crd"]) == 0
    printed = capsys.readouterr().out
    assert CRD_FILE.read_text() == printed, "crds/ is stale: run `make crd`"


def test_every_field_has_a_description() -> None:
    spec = _schema()["properties"]["spec"]
    missing = [
        path
        for path, node in _walk(spec)[1:]
        if not path.endswith(("[]", "}")) and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert node.get("type") != "null", path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        typed = "type" in node
        assert (
            typed
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"


def test_spec_rejects_unknown_fields() -> None:
    for path, node in _walk(_schema()["properties"]["spec"]):
        if node.get("type") == "object" and "properties" in node:
            assert not node.get("x-kubernetes-preserve-unknown-fields"), path


def test_lists_and_strings_are_bounded_for_cel_cost() -> None:
    for path, node in _walk(_schema()["properties"]["spec"]):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path


def test_cel_rules_cover_cross_field_checks() -> None:
    spec = _schema()["properties"]["spec"]
    rules = [
        rule["rule"] for _, node in _walk(spec) for rule in node.get("x-kubernetes-validations", [])
    ]
    joined = "\n".join(rules)
    assert "exists_one(t, t.name == s.name)" in joined  # unique stage names
    assert "self.minReplicas" in joined
    assert "self.maxReplicas" in joined
    assert "d == self.name" in joined  # no self-dependency
    assert "self.output" in joined
    stages = spec["properties"]["stages"]
    assert stages["x-kubernetes-list-type"] == "map"
    assert stages["x-kubernetes-list-map-keys"] == ["name"]


def test_no_privilege_fields_in_a_stage() -> None:
    stage = _schema()["properties"]["spec"]["properties"]["stages"]["items"]["properties"]
    forbidden = {
        "serviceAccountName",
        "securityContext",
        "privileged",
        "hostPath",
        "hostNetwork",
        "volumes",
    }
    assert forbidden.isdisjoint(stage)


def test_printer_columns_short_name_and_status_subresource() -> None:
    version = pipeline_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Stages",
        "Bottleneck",
        "Cost/h",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
    names = pipeline_crd()["spec"]["names"]
    assert "pl" in names["shortNames"]
    assert names["categories"]


def test_crd_file_is_valid_yaml_of_one_document() -> None:
    documents = [doc for doc in yaml.safe_load_all(CRD_FILE.read_text()) if doc]
    assert len(documents) == 1
    assert documents[0]["kind"] == "CustomResourceDefinition"


def test_field_reference_is_current(capsys: Any) -> None:
    assert main(["crd", "--reference"]) == 0
    printed = capsys.readouterr().out
    assert (ROOT / "docs" / "pipeline-reference.md").read_text() == printed, "run `make crd`"
    assert "`spec.stages[].cache.ttlSeconds`" in printed
