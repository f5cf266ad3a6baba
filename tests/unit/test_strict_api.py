"""The API is as strict as the apiserver: wire names only, no type coercion, checked metadata,
reserved stage names. Each class is tested over every field of a spec that sets all of them."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api.crd import pipeline_crd
from penstock.api.pipeline import RESERVED_STAGE_NAMES
from penstock.api.validation import _KNOWN_FIELDS, validate_document, validate_spec
from penstock.contract.topology import TopologyError
from penstock.dataplane.router.topology import pipeline_topology

ROOT = Path(__file__).resolve().parents[2]
SCALING = {"minReplicas": 1, "maxReplicas": 3, "targetUtilization": 0.5, "targetThroughputPerReplica": 10.5}  # fmt: skip
# Sets every field of every model once (a test below checks that it does).
FULL: dict[str, Any] = {
    "costCenter": "cc",
    "team": "t",
    "latencyBudgetMs": 800,
    "output": "b",
    "tracing": {"enabled": True, "samplingRatio": 0.5},
    "router": {
        "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}},
        "scaling": SCALING,
    },
    "imagePullSecrets": ["pull"],
    "stages": [
        {
            "name": "a",
            "image": "a:1",
            "imagePullPolicy": "Always",
            "command": ["serve"],
            "args": ["--fast"],
            "port": 8080,
            "env": [
                {"name": "A", "value": "1"},
                {
                    "name": "B",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
                },
                {
                    "name": "C",
                    "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k", "optional": False}},
                },
            ],
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "2Gi"},
            },
            "model": {
                "uri": "s3://models/m.tgz",
                "sha256": "a" * 64,
                "mountPath": "/models",
                "sizeLimit": "1Gi",
                "credentialsSecret": "creds",
                "warmup": {"requests": 1, "body": {"text": "hi"}, "path": "/"},
            },
            "cache": {
                "enabled": True,
                "ttlSeconds": 60,
                "maxMemory": "64Mi",
                "evictionPolicy": "allkeys-lru",
                "maxEntrySize": "1Mi",
                "keyHeaders": ["authorization", "x-tenant"],
                "memory": {"maxEntries": 512, "maxSize": "16Mi"},
                "shared": {
                    "url": "rediss://shared-cache:6380/0",
                    "cluster": True,
                    "passwordSecret": {
                        "name": "shared-cache",
                        "key": "password",
                        "optional": False,
                    },
                },
                "disk": {
                    "size": "2Gi",
                    "maxEntrySize": "4Mi",
                    "storageClassName": "fast-ssd",
                    "accessMode": "ReadWriteMany",
                },
                "generation": 2,
            },
            "batching": {"maxBatchSize": 4, "maxLatencyMs": 5, "path": "/batch"},
            "scaling": SCALING,
            "stream": False,
            "input": "envelope",
            "cost": {"hourlyRate": "1.5"},
            "timeoutSeconds": 30,
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [
                {
                    "key": "k",
                    "operator": "Equal",
                    "value": "v",
                    "effect": "NoExecute",
                    "tolerationSeconds": 5,
                }
            ],
        },
        {
            "name": "b",
            "image": "b:1",
            "dependsOn": ["a"],
            "cache": {
                "enabled": True,
                "shared": {"managed": {"maxMemory": "32Mi"}},
                "semantic": {
                    "embedder": "a",
                    "threshold": 0.8,
                    "oneSlotThreshold": 0.95,
                    "textField": "input.text",
                    "ignoreFields": ["lang"],
                    "maxEntries": 100,
                    "verifyFraction": 0.1,
                },
            },
            "batching": {
                "maxBatchSize": 4,
                "pack": {
                    "promptField": "question",
                    "answerField": "answer",
                    "template": "Answer each: {items}",
                    "itemTemplate": "Q{number}: {prompt}",
                    "maxPromptBytes": 4096,
                },
            },
        },
        {
            "name": "c",
            "image": "c:1",
            "variants": [
                {
                    "name": "light",
                    "image": "c-light:1",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["serve"],
                    "args": ["--small"],
                    "env": [{"name": "SIZE", "value": "small"}],
                    "resources": {"requests": {"cpu": "250m"}},
                    "model": {"uri": "https://models.example/small.gguf"},
                    "scaling": SCALING,
                    "cost": {"hourlyRate": "0.1"},
                    "timeoutSeconds": 5,
                    "nodeSelector": {"disk": "ssd"},
                    "tolerations": [{"key": "k", "operator": "Exists"}],
                    "weight": 3,
                    "latencyMs": 40,
                },
                {"name": "heavy"},
            ],
            "variantPolicy": {"type": "budget", "minConfidence": 0.7, "reserveMs": 100},
        },
    ],
}
# Maps whose keys are data, not field names.
FREE_MAPS = {"body", "nodeSelector", "requests", "limits"}


def doc(spec: Any, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "p", **metadata},
        "spec": spec,
    }


def fmt(path: tuple[Any, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value of the spec with its path, not descending into free-form maps."""
    yield path, value
    if isinstance(value, dict) and (not path or path[-1] not in FREE_MAPS):
        for key, child in value.items():
            yield from nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from nodes(child, (*path, index))


def replaced(path: tuple[Any, ...], value: Any, spec: Any = None) -> dict[str, Any]:
    spec = copy.deepcopy(FULL if spec is None else spec)
    node = spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return spec


def renamed(path: tuple[Any, ...], new: str) -> dict[str, Any]:
    spec = copy.deepcopy(FULL)
    node = spec
    for part in path[:-1]:
        node = node[part]
    node[new] = node.pop(path[-1])
    return spec


def errors_of(spec: Any) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate_spec(spec).errors]


MODEL_KEYS = [
    path
    for path, _ in nodes(FULL)
    if path and isinstance(path[-1], str) and (len(path) < 2 or path[-2] not in FREE_MAPS)
]


def test_full_spec_is_valid_and_sets_every_field() -> None:
    assert validate_spec(FULL).valid, validate_spec(FULL).errors
    assert {path[-1] for path in MODEL_KEYS} == _KNOWN_FIELDS


CAMEL = [path for path in MODEL_KEYS if re.search("[A-Z]", path[-1])]


@pytest.mark.parametrize("path", CAMEL, ids=fmt)
def test_snake_case_field_names_are_refused_everywhere(path: tuple[Any, ...]) -> None:
    snake = re.sub("([A-Z])", lambda m: "_" + m.group(1).lower(), path[-1])
    problems = errors_of(renamed(path, snake))
    where = fmt((*path[:-1], snake))
    assert (where, f"unknown field: fields are camelCase, did you mean {path[-1]!r}?") in problems


@pytest.mark.parametrize("path", [p for p, v in nodes(FULL) if isinstance(v, dict) and (not p or p[-1] not in FREE_MAPS)], ids=fmt)  # fmt: skip
def test_unknown_fields_are_refused_with_their_path(path: tuple[Any, ...]) -> None:
    spec = copy.deepcopy(FULL)
    node = spec
    for part in path:
        node = node[part]
    node["serviceAccountName"] = "admin"
    assert (fmt((*path, "serviceAccountName")), "unknown field") in errors_of(spec)


def _wrong_types(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [1, 0, "true", "false", None]
    if isinstance(value, int):
        return [True, False, str(value), float(value) + 0.5]
    if isinstance(value, float):
        return [True, str(value)]
    if isinstance(value, str):
        return [5, True, 1.5, [value]]
    return []


LEAVES = [
    (path, value) for path, value in nodes(FULL) if path and not isinstance(value, dict | list)
]


@pytest.mark.parametrize(("path", "value"), LEAVES, ids=[fmt(p) for p, _ in LEAVES])
def test_no_type_coercion_anywhere(path: tuple[Any, ...], value: Any) -> None:
    quantity = (len(path) > 1 and path[-2] in ("requests", "limits")) or path[-1] in ("sizeLimit", "maxMemory", "maxEntrySize")  # fmt: skip
    free = len(path) > 1 and path[-2] in FREE_MAPS and path[-2] not in ("requests", "limits")
    for wrong in _wrong_types(value):
        if quantity and isinstance(wrong, int) and not isinstance(wrong, bool):
            continue  # an int is a quantity
        if free and path[-2] == "body":
            continue  # any JSON
        if wrong is None and path[-1] == "optional":
            continue  # null is unset
        problems = errors_of(replaced(path, wrong))
        assert any(where == fmt(path) for where, _ in problems), (wrong, problems)


def test_port_true_is_not_1() -> None:
    assert errors_of(replaced(("stages", 0, "port"), True)) == [
        ("spec.stages[0].port", "Input should be a valid integer (got True)")
    ]


def test_an_int_is_still_a_float() -> None:
    assert validate_spec(
        replaced(("stages", 0, "scaling"), {**SCALING, "targetUtilization": 1})
    ).valid


# ----------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("metadata", "path", "needle"),
    [
        ({"name": "Bad_Name"}, "metadata.name", "DNS-1035 label"),
        ({"name": "a" * 64}, "metadata.name", "DNS-1035 label"),
        ({"name": "p\n"}, "metadata.name", "DNS-1035 label"),
        ({"name": "a.b"}, "metadata.name", "DNS-1035 label"),
        ({"name": "1rag"}, "metadata.name", "starting with a letter"),
        ({"name": None}, "metadata.name", "(got None)"),
        ({"name": 5}, "metadata.name", "(got 5)"),
        ({"namespace": "Team_A"}, "metadata.namespace", "DNS-1123 label"),
        ({"namespace": "a" * 64}, "metadata.namespace", "DNS-1123 label"),
        ({"namespace": ["x"]}, "metadata.namespace", "(got ['x'])"),
        ({"namespace": "-x"}, "metadata.namespace", "DNS-1123 label"),
        ({"labels": {"app": 5}}, "metadata.labels.app", "must be a string"),
        ({"labels": {"app": "a b"}}, "metadata.labels.app", "label value"),
        ({"labels": {"bad key": "x"}}, "metadata.labels.bad key", "invalid key"),
        ({"labels": {"Example.com/x": "y"}}, "metadata.labels.Example.com/x", "prefix"),
        ({"labels": ["a"]}, "metadata.labels", "must be a map of strings"),
        ({"annotations": {"a": True}}, "metadata.annotations.a", "must be a string"),
        ({"annotations": {"a": "x" * 300_000}}, "metadata.annotations", "larger than"),
        ({"uid": 5}, "metadata.uid", "must be a string"),
    ],
)
def test_metadata_is_checked(metadata: dict[str, Any], path: str, needle: str) -> None:
    result = validate_document(doc(FULL, **metadata))
    assert not result.valid
    assert any(p.path == path and needle in p.message for p in result.errors), result.errors


@pytest.mark.parametrize("metadata", [None, [], "p", 5])
def test_metadata_that_is_not_a_mapping(metadata: Any) -> None:
    body = doc(FULL)
    body["metadata"] = metadata
    result = validate_document(body)
    assert [p.path for p in result.errors] == ["metadata"]


def test_good_metadata_passes() -> None:
    body = doc(
        FULL,
        namespace="team-a",
        labels={"app.kubernetes.io/name": "x", "tier": ""},
        annotations={"note": "any text: ok"},
    )
    assert validate_document(body).valid


def test_unknown_top_level_field() -> None:
    body = doc(FULL)
    body["sepc"] = {}
    assert [p.path for p in validate_document(body).errors] == ["sepc"]


# ----------------------------------------------------------------- reserved names


@pytest.mark.parametrize("name", sorted(RESERVED_STAGE_NAMES))
def test_reserved_stage_names_are_refused(name: str) -> None:
    spec = {"stages": [{"name": name, "image": "x:1"}]}
    problems = errors_of(spec)
    assert problems == [("spec.stages[0].name", RESERVED_STAGE_NAMES[name])]


def test_the_router_reserves_exactly_what_validation_reserves() -> None:
    """A name the router refuses is refused by validation; every other one the router runs."""
    for name in ["input", "router", "output", "profile", "a"]:
        spec = {
            "output": "z",
            "stages": [
                {"name": name, "image": "x:1"},
                {"name": "z", "image": "z:1", "dependsOn": [name]},
            ],
        }
        valid = validate_spec(spec).valid
        body = doc(spec)
        try:
            pipeline_topology(body, {name: "http://127.0.0.1:1", "z": "http://127.0.0.1:2"}, "p")
            router_ok = True
        except TopologyError:
            router_ok = False
        assert valid == router_ok or (name == "router" and not valid), name


def test_the_crd_checks_the_name() -> None:
    schema = pipeline_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    name = schema["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] == 63
    for good in ["rag", "a", "a-1"]:
        assert re.fullmatch(name["pattern"].strip("^$"), good)
    for bad in ["1rag", "a.b", "A", "a-", ""]:
        assert not re.fullmatch(name["pattern"].strip("^$"), bad)


def test_the_crd_reserves_them_too() -> None:
    text = yaml.safe_dump(pipeline_crd())
    for name in RESERVED_STAGE_NAMES:
        assert f"'{name}'" in text


@pytest.mark.parametrize("rate", ["-1", "-0.5", "1e3", "2,50", " 2.50", "1234567890"])
def test_a_negative_or_odd_cost_is_refused_naming_the_field(rate: str) -> None:
    problems = errors_of(replaced(("stages", 0, "cost", "hourlyRate"), rate))
    assert problems == [
        (
            "spec.stages[0].cost.hourlyRate",
            'must be a decimal number of 0 or more, e.g. "2.50" (up to 9 digits and 6 decimals)'
            f" (got {rate!r})",
        )
    ]


# ----------------------------------------------------------------- what the apiserver refuses
# (found by tests/e2e/test_validation_agrees.py against a real apiserver)

TOLERATION = ("stages", 0, "tolerations", 0)


@pytest.mark.parametrize(
    ("path", "value", "where", "needle"),
    [
        ((*TOLERATION, "key"), "", fmt(TOLERATION), "an empty key needs operator Exists"),
        (TOLERATION, {"operator": "Exists", "value": "v"}, fmt(TOLERATION), "operator Exists takes no value"),
        (TOLERATION, {"key": "k", "tolerationSeconds": 5}, fmt(TOLERATION), "tolerationSeconds needs effect NoExecute"),
        ((*TOLERATION, "key"), "a b", fmt((*TOLERATION, "key")), "String should match pattern"),
        ((*TOLERATION, "value"), "a b", fmt((*TOLERATION, "value")), "must be a label value"),
        (("stages", 0, "env", 1, "valueFrom", "secretKeyRef", "key"), "s3://b/k", "spec.stages[0].env[1].valueFrom.secretKeyRef.key", "must be a Secret or ConfigMap key"),
        (("stages", 0, "env", 2, "valueFrom", "configMapKeyRef", "key"), "a b", "spec.stages[0].env[2].valueFrom.configMapKeyRef.key", "must be a Secret or ConfigMap key"),
        (("stages", 0, "env", 1, "name"), "A", "spec.stages[0].env[1].name", "variable 'A' is listed twice"),
        (("imagePullSecrets",), ["pull", "pull"], "spec.imagePullSecrets[1]", "Secret 'pull' is listed twice"),
        (("stages", 0, "nodeSelector"), {"a b": "c"}, "spec.stages[0].nodeSelector.a b (key)", "a qualified name"),
        (("stages", 0, "nodeSelector"), {"disk": "a b"}, "spec.stages[0].nodeSelector.disk", "must be a label value"),
    ],
)  # fmt: skip
def test_what_the_apiserver_refuses_in_the_rest_of_a_stage(
    path: tuple[Any, ...], value: Any, where: str, needle: str
) -> None:
    problems = errors_of(replaced(path, value))
    assert any(p == where and needle in m for p, m in problems), problems


@pytest.mark.parametrize(
    "toleration",
    [
        {"operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 60},
        {"key": "k"},
    ],
)
def test_tolerations_the_apiserver_takes(toleration: dict[str, Any]) -> None:
    assert validate_spec(replaced(TOLERATION, toleration)).valid
