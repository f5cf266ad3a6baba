"""A warmup request is the same in a cluster (the topology ConfigMap's body file) and under
`penstock dev` (the body file it writes): the gateway must not warm differently locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from penstock.api.validation import validate_spec
from penstock.dev.runner import gateway_argv
from penstock.render import PipelineRef
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
