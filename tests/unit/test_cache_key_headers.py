"""`stages[].cache.keyHeaders`: validated in the API, in the CRD, carried to the gateway by the
operator's render and by `penstock dev`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from penstock.api.crd import pipeline_crd
from penstock.api.validation import validate_spec
from penstock.dataplane.gateway.config import parse_config
from penstock.dev.runner import gateway_argv
from penstock.render import PipelineRef, RenderSettings, render_children

SPEC: dict[str, Any] = {
    "stages": [
        {
            "name": "retrieve",
            "image": "r:1",
            "cache": {"enabled": True, "keyHeaders": ["authorization", "x-tenant"]},
        }
    ]
}
SETTINGS = RenderSettings(operator_image="penstock:test", redis_image="redis:test")
UID = "00000000-0000-4000-8000-000000000001"


def with_key_headers(value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["stages"][0]["cache"]["keyHeaders"] = value
    return spec


def gateway_env(spec: dict[str, Any]) -> dict[str, str | None]:
    result = validate_spec(spec)
    assert result.spec is not None, result.summary()
    manifests = render_children(PipelineRef("rag", "demo", UID), result.spec, SETTINGS)
    [deployment] = [m for m in manifests if m["kind"] == "Deployment" and "retrieve" in str(m)]
    [gateway] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
    ]
    return {e["name"]: e.get("value") for e in gateway["env"]}


def test_key_headers_are_valid_and_kept() -> None:
    result = validate_spec(SPEC)
    assert result.valid, result.summary()
    assert result.spec is not None
    cache = result.spec.stages[0].cache
    assert cache is not None and cache.key_headers == ["authorization", "x-tenant"]
    assert validate_spec(with_key_headers([])).valid
    assert validate_spec(with_key_headers(["x-api-key", "accept-language", "a!#$%&'*+.^_`|~"]))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (["Authorization"], "use 'authorization'"),
        (["x tenant"], "not a lower-case HTTP header name"),
        (["x-tenant:"], "not a lower-case HTTP header name"),
        ([""], "at least 1 character"),
        (["x" * 65], "at most 64 characters"),
        (["é"], "not a lower-case HTTP header name"),
        (["connection"], "cannot change the answer"),
        (["host"], "cannot change the answer"),
        (["authorization", "cookie", "authorization"], "'authorization' more than once"),
        ([f"x-h{n}" for n in range(17)], "at most 16 items"),
        ("authorization", "valid list"),
    ],
)
def test_bad_key_headers_name_the_field_and_value(value: Any, needle: str) -> None:
    result = validate_spec(with_key_headers(value))
    assert not result.valid
    text = result.summary()
    assert "spec.stages[0].cache" in text and needle in text, text


def test_crd_bounds_key_headers_like_the_model() -> None:
    stage = pipeline_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]["properties"]["stages"]["items"]
    schema = stage["properties"]["cache"]["properties"]["keyHeaders"]
    assert schema["maxItems"] == 16
    assert schema["x-kubernetes-list-type"] == "set"
    assert schema["items"]["pattern"] == r"^[!#$%&'*+.^_`|~0-9a-z-]+$"
    assert schema["items"]["maxLength"] == 64
    assert "Vary" in schema["description"]


def test_render_passes_key_headers_to_the_gateway() -> None:
    assert gateway_env(SPEC)["PENSTOCK_GATEWAY_CACHE_KEY_HEADERS"] == "authorization,x-tenant"
    assert gateway_env(with_key_headers([]))["PENSTOCK_GATEWAY_CACHE_KEY_HEADERS"] == ""
    unset = copy.deepcopy(SPEC)
    del unset["stages"][0]["cache"]["keyHeaders"]
    assert "PENSTOCK_GATEWAY_CACHE_KEY_HEADERS" not in gateway_env(unset)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["authorization", "x-tenant"], ("authorization", "x-tenant")),
        ([], ()),
        (None, ("accept", "authorization")),
    ],
)
def test_the_gateway_reads_what_render_and_dev_give_it(
    value: list[str] | None, expected: tuple[str, ...], tmp_path: Path
) -> None:
    spec = with_key_headers(value)
    if value is None:
        del spec["stages"][0]["cache"]["keyHeaders"]
    env = {k: v for k, v in gateway_env(spec).items() if v is not None}
    base = ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2"]
    assert parse_config(base, environ=env).cache_key_headers == expected
    result = validate_spec(spec)
    assert result.spec is not None
    stage = result.spec.stages[0]
    argv = gateway_argv(
        "rag", result.spec, stage, 1, 2, "http://127.0.0.1:3", "redis://x", tmp_path
    )
    flags = argv[argv.index("gateway") + 1 :]
    assert parse_config(flags, environ={}).cache_key_headers == expected
