"""Unit tests: the router's envelopes, topology loading and flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from penstock.contract.topology import TopologyError, parse_topology
from penstock.dataplane.router import ConfigError, env_name, parse_config
from penstock.dataplane.router.topology import (
    envelope_body,
    load_pipeline,
    load_topology,
    parse_stage_urls,
)


def test_envelope_root_gets_the_input_unchanged() -> None:
    assert envelope_body((), b'{"q": 1}', {}) == b'{"q": 1}'


def test_envelope_with_dependencies() -> None:
    body = envelope_body(("b", "c"), b'{"q":1}', {"b": b"[1,2]", "c": b'"x"', "a": b"0"})
    assert json.loads(body) == {"input": {"q": 1}, "b": [1, 2], "c": "x"}


def topo(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "pipeline": "rag",
        "namespace": "search",
        "output": "b",
        "latencyBudgetMs": 800,
        "stages": [
            {
                "name": "a",
                "dependsOn": [],
                "url": "http://a.search.svc:80",
                "stream": False,
                "timeoutSeconds": 30,
            },
            {
                "name": "b",
                "dependsOn": ["a"],
                "url": "http://b.search.svc:80",
                "stream": True,
                "timeoutSeconds": 5,
            },
        ],
    }
    document.update(changes)
    return document


def test_parse_topology() -> None:
    topology = parse_topology(topo())
    assert topology.output == "b" and topology.latency_budget_ms == 800
    assert topology.stages["b"].depends_on == ("a",)
    assert topology.stages["b"].stream and topology.stages["b"].timeout_seconds == 5
    assert topology.needed() == {"a", "b"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output": "zzz"}, "output 'zzz' is not a stage"),
        ({"stages": []}, "'stages' must be a non-empty list"),
        ({"latencyBudgetMs": -1}, "latencyBudgetMs must be a positive integer"),
        ({"pipeline": ""}, "'pipeline' must be a non-empty string"),
        (
            {"stages": [{"name": "a", "url": "ftp://x"}, {"name": "b", "url": "http://b"}]},
            "stages[0] (a): 'ftp://x' is not an http(s)",
        ),
        (
            {"stages": [{"name": "b", "url": "http://b", "dependsOn": ["ghost"]}]},
            "stage 'b' depends on unknown stage 'ghost'",
        ),
        (
            {
                "stages": [
                    {"name": "a", "url": "http://a", "dependsOn": ["b"]},
                    {"name": "b", "url": "http://b", "dependsOn": ["a"]},
                ]
            },
            "dependency cycle",
        ),
        (
            {"stages": [{"name": "b", "url": "http://b"}, {"name": "b", "url": "http://b"}]},
            "duplicate stage name 'b'",
        ),
    ],
)
def test_parse_topology_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as error:
        parse_topology(topo(**changes), "topology.json")
    assert message in str(error.value)
    assert str(error.value).startswith("topology.json")


def test_load_topology_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TopologyError, match="not valid JSON"):
        load_topology(bad)


PIPELINE = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: rag, namespace: search}
spec:
  output: answer
  latencyBudgetMs: 500
  stages:
    - {name: retrieve, image: r:1}
    - {name: embed, image: e:1}
    - {name: audit, image: a:1}
    - {name: answer, image: g:1, dependsOn: [retrieve, embed], stream: true}
"""


def test_load_pipeline_needs_urls_only_for_needed_stages(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    urls = {
        name: f"http://127.0.0.1:{port}"
        for name, port in [("retrieve", 1), ("embed", 2), ("answer", 3)]
    }
    topology = load_pipeline(path, urls)
    assert topology.pipeline == "rag" and topology.namespace == "search"
    assert topology.needed() == {"retrieve", "embed", "answer"}
    assert topology.latency_budget_ms == 500 and topology.stages["answer"].stream
    with pytest.raises(TopologyError, match="no --stage-url for stage 'embed'"):
        load_pipeline(path, {"retrieve": "http://x", "answer": "http://y"})
    with pytest.raises(TopologyError, match="names no stage"):
        load_pipeline(path, {**urls, "ghost": "http://g"})


def test_load_pipeline_invalid(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("dependsOn: [retrieve, embed]", "dependsOn: [nope]"))
    with pytest.raises(TopologyError, match=r"invalid Pipeline.*no stage named 'nope'"):
        load_pipeline(path, {})


def test_parse_stage_urls() -> None:
    assert parse_stage_urls(["a=http://h:1/", " b = http://h:2"]) == {
        "a": "http://h:1",
        "b": "http://h:2",
    }
    with pytest.raises(TopologyError, match="not NAME=URL"):
        parse_stage_urls(["http://h:1"])


def test_parse_config_flags_and_env(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topo()))
    config = parse_config(
        ["--topology", str(path), "--stage-url", "a=http://127.0.0.1:9"],
        {env_name("--listen"): "127.0.0.1:8080", env_name("--sampling-ratio"): "0.5"},
    )
    assert config.listen.port == 8080 and config.admin_listen.port == 9090
    assert config.sampling_ratio == 0.5
    assert config.topology.stages["a"].url == "http://127.0.0.1:9"
    assert env_name("--stage-url") == "PENSTOCK_ROUTER_STAGE_URL"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--listen is required"),
        (["--listen", "0.0.0.0:80"], "exactly one of --pipeline"),
        (["--listen", "nope", "--topology", "x"], "--listen"),
        (["--listen", "h:1", "--topology", "/nonexistent.json"], "cannot read topology"),
        (["--listen", "h:1", "--topology", "x", "--sampling-ratio", "2"], "not in [0, 1]"),
    ],
)
def test_parse_config_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(argv, {})
    assert message in str(error.value)


def test_stage_ca_file_is_loaded_at_start(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topo()))
    base = ["--listen", "127.0.0.1:8080", "--topology", str(path)]
    assert parse_config(base, {}).stage_ca_file is None
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for argv, env in (
        ([*base, "--stage-ca-file", str(not_pem)], {}),
        (base, {env_name("--stage-ca-file"): str(tmp_path / "missing.pem")}),
    ):
        with pytest.raises(ConfigError, match="cannot load CA file"):
            parse_config(argv, env)
