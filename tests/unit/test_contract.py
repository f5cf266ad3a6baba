"""One contract between the planes: a stage's gateway is told the same thing in a cluster (the
environment the operator renders) and under `penstock dev` (its command line), and the gateway
reads both back into the same GatewayConfig (only where things are may differ); the router runs
the same topology from the ConfigMap the operator writes and from a Pipeline file; analyze
reads the router's profile as written."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api import PipelineSpec, Stage
from penstock.api.validation import validate_document, validate_spec
from penstock.contract import wire
from penstock.contract.profile import (
    MAX_ATTEMPTS,
    Profile,
    ProfileError,
    StageTiming,
    VariantAttempt,
    parse_profile,
)
from penstock.contract.topology import TopologyError, VariantRoute, parse_topology
from penstock.dataplane.gateway.config import GatewayConfig, parse_config
from penstock.dataplane.router.topology import parse_stage_urls, pipeline_topology
from penstock.dev.processes import DevError
from penstock.dev.runner import build_parser, gateway_argv, plan
from penstock.render import PipelineRef, RenderSettings
from penstock.render.gateway import gateway_container
from penstock.render.topology import topology
from tests.support import pipeline_examples

ROOT = Path(__file__).resolve().parents[2]
# A Pipeline whose stage answer has variants light and heavy (rendered in test_render.py too).
VARIANTS = Path(__file__).parent / "fixtures" / "variants.yaml"
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


def cluster_config(
    spec: PipelineSpec, stage: Stage, tmp_path: Path, variant: str | None = None
) -> GatewayConfig:
    """What the gateway container of the rendered Deployment reads from its environment."""
    container = gateway_container("rag", "search", spec, stage, RenderSettings(), variant)
    env = {item["name"]: item.get("value", "from-a-secret") for item in container["env"]}
    body_var = wire.env_name(wire.GATEWAY_ENV_PREFIX, "--warmup-body")
    if body_var in env:  # mounted from the topology ConfigMap in the pod: put it here
        data = topology(PipelineRef("rag", "search", UID), spec)["data"]
        local = tmp_path / "cluster-warmup.json"
        local.write_text(data[Path(env[body_var]).name])
        env[body_var] = str(local)
    return parse_config([], environ=env)


def dev_config(
    spec: PipelineSpec, stage: Stage, tmp_path: Path, variant: str | None = None
) -> GatewayConfig:
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
        variant,
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
    urls = {  # --stage-url NAME=URL, a variant's NAME <stage>/<variant>
        name: url
        for route in in_cluster.stages.values()
        for name, (url, _) in route.targets().items()
    }
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


# ----------------------------------------------------------------------------- variants


def _variant_pipeline() -> tuple[dict[str, Any], PipelineSpec]:
    doc = yaml.safe_load(VARIANTS.read_text())
    spec = validate_document(doc).spec
    assert spec is not None
    return doc, spec


def _variant_topology() -> dict[str, Any]:
    _, spec = _variant_pipeline()
    written = topology(PipelineRef("qa", "demo", UID), spec)["data"]["topology.json"]
    document: dict[str, Any] = json.loads(written)
    return document


def test_a_variant_stage_reads_back_from_topology_json_as_the_operator_wrote_it() -> None:
    document = _variant_topology()
    parsed = parse_topology(copy.deepcopy(document), "topology.json")
    assert parsed.to_document() == document
    answer = parsed.stages["answer"]
    light, heavy = "http://qa-answer-light.demo.svc:80", "http://qa-answer-heavy.demo.svc:80"
    # light sets timeoutSeconds 5, heavy inherits the stage's 20; both set latencyMs.
    assert answer.variants == (
        VariantRoute("light", light, 5.0, 1, 40),
        VariantRoute("heavy", heavy, 20.0, 1, 400),
    )
    assert (answer.url, answer.policy, answer.min_confidence, answer.reserve_ms) == (
        "",
        "budget",
        0.5,
        100,
    )
    assert answer.targets() == {"answer/light": (light, 5.0), "answer/heavy": (heavy, 20.0)}
    assert "url" not in document["stages"][1]
    assert parsed.stages["retrieve"].variants == ()
    assert parsed.stages["retrieve"].targets() == {
        "retrieve": ("http://qa-retrieve.demo.svc:80", 30.0)
    }


def test_the_router_runs_a_variant_stage_alike_from_the_pipeline_file_and_stage_urls() -> None:
    doc, _ = _variant_pipeline()
    in_cluster = parse_topology(_variant_topology(), "topology.json")
    urls = {
        target: url
        for route in in_cluster.stages.values()
        for target, (url, _) in route.targets().items()
    }
    assert set(urls) == {"retrieve", "answer/light", "answer/heavy"}
    doc["metadata"]["namespace"] = "demo"
    assert pipeline_topology(doc, urls, str(VARIANTS)) == in_cluster
    with pytest.raises(TopologyError, match="no --stage-url for stage 'answer/heavy'"):
        pipeline_topology(doc, {k: v for k, v in urls.items() if k != "answer/heavy"}, "qa")
    with pytest.raises(TopologyError, match="names no stage of qa: answer"):
        pipeline_topology(doc, {**urls, "answer": "http://127.0.0.1:1"}, "qa")


def _answer_stage(document: dict[str, Any]) -> dict[str, Any]:
    stage: dict[str, Any] = document["stages"][1]
    assert stage["name"] == "answer"
    return stage


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s["variants"][0].pop("url"),
            "topology.json: stages[1].variants[0] (answer/light): url must be a string (got None)",
        ),
        (
            lambda s: s["variants"][1].update(url="ftp://x"),
            "topology.json: stages[1].variants[1] (answer/heavy): 'ftp://x' is not an http(s)",
        ),
        (
            lambda s: s["variants"][1].update(weight=-1),
            "topology.json: stages[1].variants[1]: weight must be a non-negative integer",
        ),
        (
            lambda s: s["variants"][0].update(weight=True),
            "topology.json: stages[1].variants[0]: weight must be a non-negative integer",
        ),
        (
            lambda s: s["variants"][1].update(name="light"),
            "topology.json: stages[1].variants[1]: duplicate variant name 'light'",
        ),
        (
            lambda s: s["variants"][0].update(name=""),
            "topology.json: stages[1].variants[0]: must be an object with a non-empty 'name'",
        ),
        (
            lambda s: s["variants"][0].update(timeoutSeconds=0),
            "topology.json: stages[1].variants[0]: timeoutSeconds must be a positive number",
        ),
        (
            lambda s: s["variants"][0].update(latencyMs=1.5),
            "topology.json: stages[1].variants[0]: latencyMs must be a positive integer",
        ),
        (
            lambda s: s["variants"].pop(),
            "topology.json: stages[1]: variants must be a list of at least two variants",
        ),
        (
            lambda s: s["variantPolicy"].update(type="random"),
            "topology.json: stages[1]: variantPolicy.type must be one of cascade, budget, weighted",
        ),
        (
            lambda s: s["variantPolicy"].update(minConfidence=1.5),
            "topology.json: stages[1]: variantPolicy.minConfidence must be a number in [0, 1]",
        ),
        (
            lambda s: s["variantPolicy"].update(reserveMs=-5),
            "topology.json: stages[1]: variantPolicy.reserveMs must be a non-negative integer",
        ),
        (
            lambda s: (
                s["variantPolicy"].update(type="weighted"),
                [variant.update(weight=0) for variant in s["variants"]],
            ),
            "topology.json: stages[1]: variantPolicy weighted needs a variant with weight > 0",
        ),
    ],
)
def test_a_bad_variant_in_topology_json_is_named(change: Any, message: str) -> None:
    document = _variant_topology()
    change(_answer_stage(document))
    with pytest.raises(TopologyError) as caught:
        parse_topology(document, "topology.json")
    assert message in str(caught.value)


def test_a_stage_with_input_stream_in_topology_json_has_no_variants() -> None:
    document = _variant_topology()
    document["stages"][0]["stream"] = True
    _answer_stage(document)["input"] = "stream"
    with pytest.raises(TopologyError) as caught:
        parse_topology(document, "topology.json")
    assert str(caught.value) == (
        "topology.json: stage 'answer' has input: stream, so it cannot have variants (a streamed"
        " input cannot be sent twice)"
    )
    del _answer_stage(document)["variants"]
    _answer_stage(document)["url"] = "http://127.0.0.1:1"
    assert parse_topology(document, "topology.json").stages["answer"].stream_input


def _cascade(*attempts: VariantAttempt) -> Profile:
    return Profile(
        {
            "retrieve": StageTiming("retrieve", 0.0, 2.0, "miss"),
            "answer": StageTiming("answer", 2.0, 52.5, None, attempts),
        },
        ("retrieve", "answer"),
        53.0,
    )


def test_a_profile_with_variant_attempts_reads_back_as_the_router_wrote_it() -> None:
    profile = _cascade(
        VariantAttempt("light", "low_confidence", 10.25, 0.2),
        VariantAttempt("heavy", "served", 40.125),
    )
    answer = json.loads(json.dumps({"output": {"text": "x"}, "profile": profile.to_document()}))
    assert parse_profile(answer, "answer") == profile
    written = answer["profile"]["stages"]
    assert "variant" not in written[0] and "attempts" not in written[0]
    assert written[1]["variant"] == "heavy"
    assert written[1]["attempts"] == [
        {"variant": "light", "outcome": "low_confidence", "duration_ms": 10.25, "confidence": 0.2},
        {"variant": "heavy", "outcome": "served", "duration_ms": 40.125, "confidence": None},
    ]
    assert profile.stages["answer"].variant == "heavy"
    assert profile.stages["retrieve"].variant is None


@pytest.mark.parametrize(
    ("attempts", "variant"),
    [
        ((VariantAttempt("light", "served", 3.0, 0.9),), "light"),
        ((VariantAttempt("light", "failed", 3.0), VariantAttempt("heavy", "failed", 9.0)), None),
        (
            (VariantAttempt("light", "low_confidence", 3.0, 0.1), VariantAttempt("heavy", "failed", 9.0)),
            None,
        ),
        ((VariantAttempt("light", "low_confidence", 3.0, 0.1),), None),
        ((), None),
    ],
)  # fmt: skip
def test_the_variant_that_answered_is_the_last_attempt_if_it_served(
    attempts: tuple[VariantAttempt, ...], variant: str | None
) -> None:
    profile = _cascade(*attempts)
    assert profile.stages["answer"].variant == variant
    document = parse_profile(json.loads(json.dumps(profile.to_document())), "answer")
    assert document.stages["answer"].variant == variant
    assert document.stages["answer"].attempts == attempts


def _with_attempts(attempts: Any) -> dict[str, Any]:
    document = _cascade(VariantAttempt("heavy", "served", 40.0)).to_document()
    document["stages"][1]["attempts"] = attempts
    return {"profile": document}


ATTEMPT = {"variant": "light", "outcome": "served", "duration_ms": 1.0}


@pytest.mark.parametrize(
    ("attempts", "message"),
    [
        (
            [{**ATTEMPT, "outcome": "skipped"}],
            "answer: profile.stages[1].attempts[0] needs a variant, an outcome (served,"
            " low_confidence, failed) and a finite duration_ms",
        ),
        ([{**ATTEMPT, "variant": ""}], "profile.stages[1].attempts[0] needs a variant"),
        ([ATTEMPT, {**ATTEMPT, "duration_ms": "1"}], "profile.stages[1].attempts[1] needs a"),
        (
            [{**ATTEMPT, "confidence": 1.5}],
            "answer: profile.stages[1].attempts[0].confidence must be a number in [0, 1] or null",
        ),
        ([{**ATTEMPT, "confidence": True}], "attempts[0].confidence must be a number in [0, 1]"),
        (["served"], "answer: profile.stages[1].attempts[0] must be an object (got 'served')"),
        (
            [ATTEMPT] * (MAX_ATTEMPTS + 1),
            "answer: profile.stages[1].attempts must be a list of at most 16 objects",
        ),
        ({"light": ATTEMPT}, "profile.stages[1].attempts must be a list of at most 16 objects"),
    ],
)
def test_a_bad_variant_attempt_in_a_profile_is_named(attempts: Any, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(_with_attempts(attempts), "answer")
    assert message in str(caught.value)


def test_as_many_attempts_as_allowed_read_back() -> None:
    profile = parse_profile(_with_attempts([ATTEMPT] * MAX_ATTEMPTS), "answer")
    assert len(profile.stages["answer"].attempts) == MAX_ATTEMPTS == 16


@pytest.mark.parametrize("variant", ["light", "heavy"])
def test_the_cluster_and_penstock_dev_configure_a_variant_gateway_alike(
    variant: str, tmp_path: Path
) -> None:
    _, spec = _variant_pipeline()
    [workload] = [w for w in spec.workloads() if w.variant == variant]
    cluster = cluster_config(spec, workload.stage, tmp_path, variant)
    local = dev_config(spec, workload.stage, tmp_path, variant)
    assert _stage_decisions(cluster) == _stage_decisions(local)
    assert cluster.warmup_body == local.warmup_body == b'{"text": "warmup"}'
    assert (cluster.stage, cluster.variant) == ("answer", variant)
    assert cluster.stage_image == workload.stage.image
    plain = dev_config(spec, spec.stages[0], tmp_path)
    assert (plain.stage, plain.variant) == ("retrieve", None)


def _dev_document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(VARIANTS.read_text())
    doc["metadata"]["annotations"] = {
        f"penstock.dev/dev-command.{component}": f"python {component}.py --port {{port}}"
        for component in ("retrieve", "answer-light", "answer-heavy")
    }
    return doc


def test_penstock_dev_runs_each_variant_and_tells_the_router_where(tmp_path: Path) -> None:
    doc = _dev_document()
    spec = validate_document(doc).spec
    assert spec is not None
    result = plan(doc, spec, build_parser().parse_args(["qa.yaml"]), tmp_path)
    procs = {proc.name: proc for proc in result.procs}
    assert sorted(procs) == [
        "gateway answer/heavy",
        "gateway answer/light",
        "router",
        "stage answer/heavy",
        "stage answer/light",
        "stage retrieve",
    ]
    assert list(result.urls) == ["retrieve", "answer/light", "answer/heavy"]
    for variant in ("light", "heavy"):
        stage = procs[f"stage answer/{variant}"]
        assert stage.argv[1] == f"answer-{variant}.py"
        assert stage.log == tmp_path / f"stage-answer-{variant}.log"
        gateway = procs[f"gateway answer/{variant}"]
        assert gateway.log == tmp_path / f"gateway-answer-{variant}.log"
        config = parse_config(gateway.argv[4:], environ={})
        assert (config.stage, config.variant) == ("answer", variant)
        # The gateway fronts its own variant's process; the router calls the gateway.
        port = stage.argv[stage.argv.index("--port") + 1]
        assert config.upstream == f"http://127.0.0.1:{port}"
        assert result.urls[f"answer/{variant}"] == f"http://{config.listen}"
        assert config.warmup_body == b'{"text": "warmup"}'
        assert (tmp_path / f"warmup-answer-{variant}.json").exists()
    assert "gateway retrieve" not in procs  # no cache, batching, tracing or warmup
    router = procs["router"].argv
    flags = [router[i + 1] for i, arg in enumerate(router) if arg == "--stage-url"]
    assert flags == [f"{target}={url}" for target, url in result.urls.items()]
    # The router accepts them: one URL per variant, none for the stage itself.
    routes = pipeline_topology(doc, parse_stage_urls(flags), "qa.yaml").stages["answer"]
    assert [(v.name, v.url) for v in routes.variants] == [
        ("light", result.urls["answer/light"]),
        ("heavy", result.urls["answer/heavy"]),
    ]


def test_penstock_dev_names_the_annotation_a_variant_lacks(tmp_path: Path) -> None:
    doc = _dev_document()
    del doc["metadata"]["annotations"]["penstock.dev/dev-command.answer-heavy"]
    spec = validate_document(doc).spec
    assert spec is not None
    with pytest.raises(DevError) as caught:
        plan(doc, spec, build_parser().parse_args(["qa.yaml"]), tmp_path)
    assert "stage 'answer-heavy' has no dev command" in str(caught.value)
    assert "penstock.dev/dev-command.answer-heavy" in str(caught.value)
