"""One contract between the planes: a stage's gateway is told the same thing in a cluster (the
environment the operator renders) and under `penstock dev` (its command line), and the gateway
reads both back into the same GatewayConfig (only where things are may differ); the router runs
the same topology from the ConfigMap the operator writes and from a Pipeline file; analyze
reads the router's profile as written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api import PipelineSpec, Stage
from penstock.api.validation import validate_document, validate_spec
from penstock.contract import wire
from penstock.contract.profile import Profile, StageTiming, parse_profile
from penstock.contract.topology import parse_topology
from penstock.dataplane.gateway.config import GatewayConfig, parse_config
from penstock.dataplane.router.topology import pipeline_topology
from penstock.dev.runner import build_parser, gateway_argv, plan
from penstock.render import PipelineRef, RenderSettings
from penstock.render.gateway import gateway_container
from penstock.render.topology import topology
from tests.support import pipeline_examples

ROOT = Path(__file__).resolve().parents[2]
UID = "00000000-0000-4000-8000-000000000001"
# Where a gateway runs and what it talks to: set by the environment, not by the Pipeline.
PLACEMENT = (
    *("listen", "admin_listen", "upstream", "namespace", "redis_url", "otlp_endpoint"),
    # Secrets (from the pod's Secret references in a cluster) and the shared tier, which
    # `penstock dev` (one replica per stage) does not run.
    *("redis_password", "shared_redis_url", "shared_redis_password", "shared_cache_key"),
    "semantic_embedder_url",  # the embedder's Service, or its local port
)
TRACED = {
    "tracing": {"enabled": True, "samplingRatio": 0.25},
    "costCenter": "search",
    "stages": [
        {
            "name": "embed",
            "image": "e:1",
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
            "model": {
                "uri": "file:///m",
                "sha256": "a" * 64,
                "warmup": {"requests": 3, "path": "/warm", "body": {"text": "w"}},
            },
            "cache": {
                "enabled": True,
                "ttlSeconds": 60,
                "keyHeaders": ["x-tenant"],
                "memory": {"maxEntries": 100, "maxSize": "8Mi"},
                "shared": {
                    "url": "rediss://cache.example:6380/2",
                    "passwordSecret": {"name": "shared-redis", "key": "password"},
                },
            },
            "batching": {"maxBatchSize": 4, "maxLatencyMs": 7, "path": "/batch"},
            "timeoutSeconds": 9,
        },
        {
            "name": "answer",
            "image": "a:1",
            "dependsOn": ["embed"],
            "cache": {
                "enabled": True,
                "semantic": {
                    "embedder": "embed",
                    "threshold": 0.8,
                    "oneSlotThreshold": 0.95,
                    "textField": "input.text",
                    "ignoreFields": ["lang", "user.tier"],
                    "maxEntries": 50,
                    "verifyFraction": 0.5,
                },
            },
        },
    ],
}


def _examples() -> list[tuple[str, PipelineSpec, Stage]]:
    cases = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or doc.get("kind") != "Pipeline":
            continue
        spec = validate_document(doc).spec
        assert spec is not None, path
        cases += [(f"{path.stem}-{s.name}", spec, s) for s in spec.stages]
    traced = validate_spec(TRACED).spec
    assert traced is not None
    return [
        *cases,
        ("traced-embed", traced, traced.stages[0]),
        ("traced-answer", traced, traced.stages[1]),
    ]


CASES = _examples()


def cluster_config(spec: PipelineSpec, stage: Stage, tmp_path: Path) -> GatewayConfig:
    """What the gateway container of the rendered Deployment reads from its environment."""
    container = gateway_container("rag", "search", spec, stage, RenderSettings())
    env = {item["name"]: item.get("value", "from-a-secret") for item in container["env"]}
    body_var = wire.env_name(wire.GATEWAY_ENV_PREFIX, "--warmup-body")
    if body_var in env:  # mounted from the topology ConfigMap in the pod: put it here
        data = topology(PipelineRef("rag", "search", UID), spec)["data"]
        local = tmp_path / "cluster-warmup.json"
        local.write_text(data[Path(env[body_var]).name])
        env[body_var] = str(local)
    return parse_config([], environ=env)


def dev_config(spec: PipelineSpec, stage: Stage, tmp_path: Path) -> GatewayConfig:
    argv = gateway_argv(
        "rag",
        spec,
        stage,
        1,
        2,
        "http://127.0.0.1:3",
        "redis://127.0.0.1:4/0",
        tmp_path,
        "http://127.0.0.1:4318",
        "http://127.0.0.1:5" if stage.cache and stage.cache.semantic else None,
    )
    return parse_config(argv[argv.index("gateway") + 1 :], environ={})


def _stage_decisions(config: GatewayConfig) -> dict[str, Any]:
    return {
        key: value
        for key, value in dataclasses.asdict(config).items()
        if key not in PLACEMENT and key != "warmup_body"
    }


@pytest.mark.parametrize(("case", "spec", "stage"), CASES, ids=[c[0] for c in CASES])
def test_the_cluster_and_penstock_dev_configure_a_gateway_alike(
    case: str, spec: PipelineSpec, stage: Stage, tmp_path: Path
) -> None:
    cluster = cluster_config(spec, stage, tmp_path)
    local = dev_config(spec, stage, tmp_path)
    assert _stage_decisions(cluster) == _stage_decisions(local)
    assert cluster.warmup_body == local.warmup_body
    assert (cluster.redis_url is None) == (local.redis_url is None) == (not stage.cache_enabled)
    assert (cluster.otlp_endpoint is None) == (local.otlp_endpoint is None)
    assert (cluster.otlp_endpoint is None) == (not spec.tracing_enabled)


def test_the_traced_case_really_carries_every_decision(tmp_path: Path) -> None:
    """The parity above compares something: the full case sets every field off its default."""
    spec = validate_spec(TRACED).spec
    assert spec is not None
    config = dev_config(spec, spec.stages[0], tmp_path)
    default = GatewayConfig(
        listen=config.listen, upstream=config.upstream, admin_listen=config.admin_listen
    )
    assert config.hourly_cost > 0 and config.cost_center == "search"
    assert (config.warmup_requests, config.warmup_path) == (3, "/warm")
    assert json.loads(config.warmup_body) == {"text": "w"}
    assert config.model_version == "a" * 64
    assert config.cache_ttl_seconds == 60 and config.cache_key_headers == ("x-tenant",)
    assert (config.memory_cache_max_entries, config.memory_cache_max_bytes) == (100, 8 << 20)
    assert (config.batch_max_size, config.batch_max_latency_ms) == (4, 7.0)
    assert config.batch_path == "/batch" and config.sampling_ratio == 0.25
    assert config.timeout_seconds == 9.0 and config.stage_image == "e:1"
    changed = [
        f.name
        for f in dataclasses.fields(GatewayConfig)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    assert len(changed) >= 15, changed
    answer = dev_config(spec, spec.stages[1], tmp_path)
    assert answer.semantic_embedder_url == "http://127.0.0.1:5"
    assert (answer.semantic_threshold, answer.semantic_one_slot_threshold) == (0.8, 0.95)
    assert answer.semantic_text_field == "input.text"
    assert answer.semantic_ignore_fields == ("lang", "user.tier")
    assert (answer.semantic_max_entries, answer.semantic_verify_fraction) == (50, 0.5)
    cluster = cluster_config(spec, spec.stages[1], tmp_path)
    assert cluster.semantic_embedder_url == "http://rag-embed.search.svc:80"


@pytest.mark.parametrize("body", [None, {}, {"text": "warm"}, [1, 2], "x", 0])
def test_the_warmup_body_is_the_same_in_a_cluster_and_under_dev(body: Any, tmp_path: Path) -> None:
    warmup: dict[str, Any] = {"requests": 2}
    if body is not None:
        warmup["body"] = body
    spec = validate_spec(
        {
            "stages": [
                {"name": "embed", "image": "e:1", "model": {"uri": "file:///m", "warmup": warmup}}
            ]
        }
    ).spec
    assert spec is not None
    cluster = cluster_config(spec, spec.stages[0], tmp_path)
    assert cluster.warmup_body == dev_config(spec, spec.stages[0], tmp_path).warmup_body
    assert json.loads(cluster.warmup_body) == body


@pytest.mark.parametrize("path", pipeline_examples(), ids=lambda p: p.stem)
def test_the_router_runs_the_same_topology_in_a_cluster_and_from_a_pipeline_file(
    path: Path,
) -> None:
    """render writes topology.json, the router parses it; locally the router builds its Topology
    from the Pipeline file and --stage-url flags: the two are the same."""
    doc = yaml.safe_load(path.read_text())
    spec = validate_document(doc).spec
    assert spec is not None
    ref = PipelineRef(doc["metadata"]["name"], doc["metadata"].get("namespace") or "default", UID)
    written = topology(ref, spec)["data"]["topology.json"]
    in_cluster = parse_topology(json.loads(written), "topology.json")
    urls = {name: route.url for name, route in in_cluster.stages.items()}
    assert pipeline_topology(doc, urls, str(path)) == in_cluster
    assert json.loads(written) == in_cluster.to_document()
    assert in_cluster.output == spec.output_stage
    assert set(in_cluster.stages) == {stage.name for stage in spec.stages}


def test_a_profile_reads_back_as_the_router_wrote_it() -> None:
    profile = Profile(
        {
            "retrieve": StageTiming("retrieve", 0.0, 1.5, "miss"),
            "generate": StageTiming("generate", 1.5, 4.25, None),
        },
        ("retrieve", "generate"),
        4.5,
    )
    answer = json.loads(json.dumps({"output": {"text": "x"}, "profile": profile.to_document()}))
    assert parse_profile(answer, "answer") == profile
    assert answer["profile"]["stages"][1]["duration_ms"] == 2.75


@pytest.mark.parametrize("traced", [True, False])
def test_penstock_dev_sends_traces_where_told_as_the_cluster_does(
    traced: bool, tmp_path: Path
) -> None:
    doc = {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {
            "name": "qa",
            "annotations": {"penstock.dev/dev-command.answer": "python app.py --port {port}"},
        },
        "spec": {
            "tracing": {"enabled": traced, "samplingRatio": 0.5},
            "stages": [{"name": "answer", "image": "a:1"}],
        },
    }
    spec = validate_document(doc).spec
    assert spec is not None
    args = build_parser().parse_args(["x.yaml", "--otlp-endpoint", "http://127.0.0.1:4318"])
    procs = {proc.name: proc.argv for proc in plan(doc, spec, args, tmp_path).procs}
    router = procs["router"]
    if not traced:  # no tracing in the spec: nothing is sent anywhere
        assert "--otlp-endpoint" not in router and "gateway answer" not in procs
        return
    assert router[router.index("--otlp-endpoint") + 1] == "http://127.0.0.1:4318"
    assert router[router.index("--sampling-ratio") + 1] == "0.5"
    gateway = parse_config(procs["gateway answer"][4:], environ={})
    assert (gateway.otlp_endpoint, gateway.sampling_ratio) == ("http://127.0.0.1:4318", 0.5)
