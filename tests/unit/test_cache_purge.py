"""The purge's JSON patch (controller/purge.py) and the generation in the gateway's flags."""

from __future__ import annotations

from typing import Any

import pytest

from penstock.api.validation import validate_spec
from penstock.controller.purge import PurgeError, purge_operations
from penstock.render import RenderSettings
from penstock.render.gateway import gateway_container


def pipeline(*stages: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "rag"}, "spec": {"stages": list(stages)}}


CACHING = {"name": "retrieve", "cache": {"enabled": True}}
PURGED = {"name": "embed", "cache": {"enabled": True, "generation": 4}}
PLAIN = {"name": "generate"}


def test_by_default_every_caching_stage_is_raised_each_under_a_test_of_what_it_was() -> None:
    operations, generations = purge_operations(pipeline(PLAIN, CACHING, PURGED))
    assert generations == {"retrieve": 1, "embed": 5}
    assert operations == [
        {"op": "test", "path": "/spec/stages/1/name", "value": "retrieve"},
        {"op": "add", "path": "/spec/stages/1/cache/generation", "value": 1},
        {"op": "test", "path": "/spec/stages/2/name", "value": "embed"},
        {"op": "test", "path": "/spec/stages/2/cache/generation", "value": 4},
        {"op": "add", "path": "/spec/stages/2/cache/generation", "value": 5},
    ]


def test_a_named_stage_alone_is_raised() -> None:
    _, generations = purge_operations(pipeline(CACHING, PURGED), ["embed", "embed"])
    assert generations == {"embed": 5}


@pytest.mark.parametrize(
    ("stages", "names", "message"),
    [
        ([PLAIN], [], "has no stage with cache.enabled"),
        ([CACHING, PLAIN], ["generate"], "no caching stage 'generate' (caching stages: retrieve)"),
        (
            [{"name": "x", "cache": {"enabled": True, "generation": "2"}}],
            [],
            "spec.stages[0].cache.generation: '2' is not a count",
        ),
    ],
)
def test_a_purge_that_cannot_be_made_names_why(
    stages: list[dict[str, Any]], names: list[str], message: str
) -> None:
    with pytest.raises(PurgeError) as error:
        purge_operations(pipeline(*stages), names)
    assert message in str(error.value)


def test_the_generation_reaches_the_gateway_only_once_raised() -> None:
    def env(cache: dict[str, Any]) -> dict[str, Any]:
        spec = validate_spec({"stages": [{"name": "e", "image": "e:1", "cache": cache}]}).spec
        assert spec is not None
        container = gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())
        return {e["name"]: e.get("value") for e in container["env"]}

    assert "PENSTOCK_GATEWAY_CACHE_GENERATION" not in env({"enabled": True})
    assert env({"enabled": True, "generation": 3})["PENSTOCK_GATEWAY_CACHE_GENERATION"] == "3"


@pytest.mark.parametrize("generation", [-1, 2**31, "1", True])
def test_a_bad_generation_is_refused_naming_the_field(generation: object) -> None:
    result = validate_spec(
        {
            "stages": [
                {"name": "e", "image": "e:1", "cache": {"enabled": True, "generation": generation}}
            ]
        }
    )
    assert not result.valid
    assert any(p.path == "spec.stages[0].cache.generation" for p in result.errors), result.errors
