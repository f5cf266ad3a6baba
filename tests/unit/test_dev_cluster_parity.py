"""The gateway is configured alike in a cluster and under `penstock dev`: the warmup body (the
topology ConfigMap's file vs the file dev writes) and the hourly cost of a replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from penstock.api.validation import validate_spec
from penstock.dev.runner import gateway_argv
from penstock.render import PipelineRef, RenderSettings
from penstock.render.gateway import gateway_container
from penstock.render.topology import topology

UID = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize("body", [None, {}, {"text": "warm"}, [1, 2], "x", 0])
def test_the_warmup_body_is_the_same_in_a_cluster_and_under_dev(body: Any, tmp_path: Path) -> None:
    warmup: dict[str, Any] = {"requests": 2}
    if body is not None:
        warmup["body"] = body
    spec = {
        "stages": [
            {"name": "embed", "image": "e:1", "model": {"uri": "file:///m", "warmup": warmup}}
        ]
    }
    result = validate_spec(spec)
    assert result.spec is not None, result.errors
    stage = result.spec.stages[0]
    rendered = topology(PipelineRef("rag", "search", UID), result.spec)["data"]
    argv = gateway_argv("rag", result.spec, stage, 1, 2, "http://127.0.0.1:3", None, tmp_path)
    local = Path(argv[argv.index("--warmup-body") + 1]).read_text()
    assert local == rendered["warmup-embed.json"]
    assert json.loads(local) == body


def test_penstock_dev_prices_a_replica_as_the_cluster_does(tmp_path: Path) -> None:
    spec = {
        "stages": [
            {
                "name": "gen",
                "image": "g:1",
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
            }
        ]
    }
    result = validate_spec(spec)
    assert result.spec is not None, result.errors
    stage = result.spec.stages[0]
    env = {
        item["name"]: item.get("value")
        for item in gateway_container("rag", "search", result.spec, stage, RenderSettings())["env"]
    }
    argv = gateway_argv("rag", result.spec, stage, 1, 2, "http://127.0.0.1:3", None, tmp_path)
    local = argv[argv.index("--hourly-cost") + 1]
    assert local == env["PENSTOCK_GATEWAY_HOURLY_COST"]
    assert float(local) > 0
