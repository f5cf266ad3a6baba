"""What `penstock validate` accepts, the real apiserver accepts once rendered; what it refuses,
the apiserver refuses too (server-side dry runs: nothing is created)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from penstock.api.validation import validate_document
from penstock.render import PipelineRef, RenderSettings, render_children
from tests.unit.test_strict_api import FULL, nodes

from .conftest import Cluster

pytestmark = pytest.mark.e2e

FULL_DOC: dict[str, Any] = {
    "apiVersion": "penstock.dev/v1alpha1",
    "kind": "Pipeline",
    "metadata": {"name": "full"},
    "spec": FULL,
}
FULL_PATHS = [path for path, _ in nodes(FULL) if path]

RESOURCES: list[dict[str, Any]] = [
    {"requests": {"nvidia.com/gpu": 1}},
    {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}},
    {"requests": {"nvidia.com/gpu": "500m"}, "limits": {"nvidia.com/gpu": "500m"}},
    {"limits": {"nvidia.com/gpu": 2}},
    {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
    {"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}},
    {"requests": {"cpu": "9223372036854775807", "memory": "7Ei"}},
    {"requests": {"example.com/foo": 3}},
    {"requests": {"hugepages-2Mi": "2Mi"}},
    {"requests": {"hugepages-2Mi": "2Mi", "memory": "1Gi"}, "limits": {"hugepages-2Mi": "2Mi"}},
    {"requests": {"bogus": 1}},
    {"requests": {"kubernetes.io/foo": 1}},
    {"requests": {"Nvidia.com/gpu": 1}},
    {"requests": {"nvidia.com/GPU_big": 1}},
    {"requests": {"a/b/c": 1}},
    {"requests": {"cpu": "1E", "memory": "2e3", "ephemeral-storage": "1.5Gi"}},
    {"requests": {"cpu": 0}},
]


def pipeline(resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "agree"},
        "spec": {"stages": [{"name": "a", "image": "a:1", "resources": resources}]},
    }


def raw_deployment(resources: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": "agree"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agree-raw"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "a", "image": "a:1", "resources": resources}]},
            },
        },
    }


def dry_run(cluster: Cluster, namespace: str, objects: list[dict[str, Any]]) -> Any:
    return cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-",
        stdin=yaml.safe_dump_all(objects), check=False,
    )  # fmt: skip


@pytest.mark.parametrize("resources", RESOURCES, ids=lambda r: yaml.safe_dump(r, default_flow_style=True).strip())  # fmt: skip
def test_validation_and_the_apiserver_agree(
    cluster: Cluster, crd: str, namespace: str, resources: dict[str, Any]
) -> None:
    result = validate_document(pipeline(resources))
    if result.spec is not None:
        children = render_children(PipelineRef("agree", namespace), result.spec, RenderSettings())
        answer = dry_run(cluster, namespace, [pipeline(resources), *children])
        assert answer.returncode == 0, answer.stderr
    else:
        answer = dry_run(cluster, namespace, [raw_deployment(resources)])
        assert answer.returncode != 0, (result.errors, answer.stdout)


NAMES = st.sampled_from(
    ["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "nvidia.com/gpu", "example.com/foo",
     "kubernetes.io/foo", "bogus", "hugepages-1Gi", "pods", "requests.cpu", "attachable-volumes-x"]
)  # fmt: skip
VALUES = st.sampled_from([0, 1, 2, "500m", "1.5", "2Gi", "1E", "3", "100Mi", "4Mi", "1e3", "1Gi"])
MAPS = st.dictionaries(NAMES, VALUES, max_size=3)


@given(st.fixed_dictionaries({}, optional={"requests": MAPS, "limits": MAPS}))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_resources_get_the_same_verdict(
    cluster: Cluster, crd: str, namespace: str, resources: dict[str, Any]
) -> None:
    test_validation_and_the_apiserver_agree(cluster, crd, namespace, resources)


# Values that are valid somewhere, odd elsewhere: the edges of names, numbers and strings.
ODD = st.sampled_from(
    [0, 1, 65535, 65536, -1, 1.5, True, "", "a", "A", "a-b", "a.b", "a_b", "-a", "a" * 63,
     "a" * 64, "x/y", "nvidia.com/gpu", "Exists", "Equal", "NoSchedule", "/", "/x", "::", "1Gi",
     "500m", "2.50", "s3://b/k", "https://h/m", "{port}", "é", "a b", [], ["a"], {}, {"a": "b"},
     {"a b": "c"}, {"k": "a b"}, {"nvidia.com/gpu.present": "true"}, {"-k": "v"}, {"k": ""},
     [{"name": "X", "value": "1"}], [{"key": "k", "operator": "Exists"}], "latest", "a:1 b"]
)  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from(FULL_PATHS), ODD), min_size=1, max_size=3))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_spec_that_validates_is_accepted_by_the_apiserver(
    cluster: Cluster, crd: str, namespace: str, edits: list[tuple[tuple[Any, ...], Any]]
) -> None:
    body = copy.deepcopy(FULL_DOC)
    for path, value in edits:
        node: Any = body["spec"]
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    result = validate_document(body)
    assume(result.spec is not None)
    assert result.spec is not None
    children = render_children(PipelineRef("full", namespace), result.spec, RenderSettings())
    answer = dry_run(cluster, namespace, [body, *children])
    assert answer.returncode == 0, (edits, answer.stderr[-2000:])
