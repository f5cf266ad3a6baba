"""Container resources: what the apiserver would refuse in a pod template is refused by
validation, naming the field (tests/e2e/test_validation_agrees.py checks the same cases against
a real apiserver); what it needs (a GPU's limit) is rendered."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from penstock.api.cost import PriceTable, replica_hourly_cost
from penstock.api.validation import validate_spec
from penstock.render import PipelineRef, RenderSettings, render_children


def spec(resources: dict[str, Any], router: bool = False) -> dict[str, Any]:
    if router:
        return {"stages": [{"name": "a", "image": "a:1"}], "router": {"resources": resources}}
    return {"stages": [{"name": "a", "image": "a:1", "resources": resources}]}


@pytest.mark.parametrize("router", [False, True], ids=["stage", "router"])
@pytest.mark.parametrize(
    ("resources", "field", "needle"),
    [
        ({"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}, "requests.nvidia.com/gpu", "must equal its limit 2"),
        ({"requests": {"nvidia.com/gpu": "500m"}}, "requests.nvidia.com/gpu", "counted in whole units"),
        ({"limits": {"example.com/fpga": "1.5"}}, "limits.example.com/fpga", "counted in whole units"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}, "requests.cpu", "more than its limit '1'"),
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}, "requests.memory", "more than its limit"),
        ({"requests": {"bogus": 1}}, "requests.bogus", "is not a container resource"),
        ({"limits": {"pods": 1}}, "limits.pods", "is not a container resource"),
        ({"requests": {"hugepages-2Mi": "2Mi"}}, "", "huge pages need a cpu or memory"),
        ({"requests": {"hugepages-2Mi": 1, "memory": "1Gi"}}, "requests.hugepages-2Mi", "not a whole number of 2Mi pages"),
        ({"requests": {"hugepages-x": "2Mi", "memory": "1Gi"}}, "requests.hugepages-x", "page size"),
        ({"requests": {"Bad Name": 1}}, "requests.Bad Name (key)", "a qualified name"),
    ],
)  # fmt: skip
def test_what_the_apiserver_refuses_is_refused(
    resources: dict[str, Any], field: str, needle: str, router: bool
) -> None:
    prefix = "spec.router.resources" if router else "spec.stages[0].resources"
    errors = validate_spec(spec(resources, router)).errors
    path = f"{prefix}.{field}" if field else prefix
    assert any(p.path == path and needle in p.message for p in errors), errors


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"nvidia.com/gpu": 1}},
        {"limits": {"nvidia.com/gpu": 2}},
        {"requests": {"hugepages-2Mi": "4Mi", "memory": "1Gi"}},
        {"limits": {"cpu": 0}},
        {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        {"requests": {"kubernetes.io/anything": "1.5"}},
        {"requests": {"cpu": "9223372036854775807", "memory": "7Ei"}},
    ],
)
def test_what_the_apiserver_takes_is_valid(resources: dict[str, Any]) -> None:
    assert validate_spec(spec(resources)).valid
    assert validate_spec(spec(resources, router=True)).valid


def _containers(resources: dict[str, Any], router: bool = False) -> dict[str, Any]:
    result = validate_spec(spec(resources, router))
    assert result.spec is not None
    name = "p-router" if router else "p-a"
    children = render_children(PipelineRef("p", "ns"), result.spec, RenderSettings())
    deployment = next(o for o in children if o["kind"] == "Deployment" and o["metadata"]["name"] == name)  # fmt: skip
    first: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    return first


def test_a_gpu_request_gets_its_limit_and_a_limited_resource_no_default_request() -> None:
    assert _containers({"requests": {"nvidia.com/gpu": 1}}) == {
        "requests": {"nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert _containers({"requests": {"nvidia.com/gpu": 1}}, router=True)["limits"] == {"nvidia.com/gpu": 1}  # fmt: skip
    assert _containers({"limits": {"cpu": 0}}) == {
        "requests": {"memory": "128Mi"},
        "limits": {"cpu": "0"},
    }
    assert _containers({}) == {"requests": {"cpu": "100m", "memory": "128Mi"}}


def test_a_gpu_given_as_a_limit_only_is_costed() -> None:
    result = validate_spec(spec({"limits": {"nvidia.com/gpu": 2}}))
    assert result.spec is not None
    prices = PriceTable()
    expected = Decimal("0.1") * prices.cpu_core_hour + Decimal("0.125") * prices.memory_gib_hour
    assert replica_hourly_cost(result.spec.stages[0], prices) == expected + 2 * Decimal("2.48")
