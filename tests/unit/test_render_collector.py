"""The per-namespace collector: golden file, ownership, restricted pod, config wiring.

The configuration is validated and run by a real collector binary in tests/integration.
"""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import yaml

from penstock.documents import dump_documents
from penstock.render import PipelineRef, RenderSettings
from penstock.render.collector import (
    COLLECTOR_NAME,
    TracedPipeline,
    collector_config,
    render_collector,
)

GOLDEN = Path(__file__).parent / "golden" / "collector.yaml"
SETTINGS = RenderSettings(collector_image="otelcol:test", otlp_endpoint="http://jaeger:4318/")
PIPELINES = [
    TracedPipeline(PipelineRef("rag", "search", "uid-rag"), "search-team", "relevance"),
    TracedPipeline(PipelineRef("chat", "search", "uid-chat"), "chat-team", "assistants"),
]


def test_render_matches_golden_file() -> None:
    text = dump_documents(render_collector("search", PIPELINES, SETTINGS))
    if os.environ.get("PENSTOCK_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "collector.yaml differs: review, then PENSTOCK_UPDATE_GOLDEN=1"
    )


def test_every_tracing_pipeline_owns_it_and_none_controls_it() -> None:
    for manifest in render_collector("search", PIPELINES, SETTINGS):
        assert manifest["metadata"]["name"] == COLLECTOR_NAME
        owners = manifest["metadata"]["ownerReferences"]
        assert sorted(o["uid"] for o in owners) == ["uid-chat", "uid-rag"]
        assert not any(o.get("controller") for o in owners)
        kubernetes_validate.validate(manifest, "1.34", strict=True)


def test_each_pipeline_is_stamped_with_its_own_cost_center_in_name_order() -> None:
    config = collector_config("search", PIPELINES, None)
    traces = config["service"]["pipelines"]["traces"]
    assert traces["processors"] == [
        "memory_limiter",
        "attributes/chat",
        "attributes/rag",
        "batch",
    ]
    rag = config["processors"]["attributes/rag"]
    assert rag["include"]["resources"] == [{"key": "penstock.pipeline", "value": "rag"}]
    actions = {a["key"]: a["value"] for a in rag["actions"]}
    assert actions == {
        "penstock.cost_center": "search-team",
        "penstock.team": "relevance",
        "k8s.namespace.name": "search",
    }


def test_traces_go_to_the_backend_when_set_else_to_the_log() -> None:
    with_backend = collector_config("search", PIPELINES, "http://jaeger:4318/")
    assert with_backend["exporters"]["otlphttp/traces"] == {"endpoint": "http://jaeger:4318"}
    assert with_backend["service"]["pipelines"]["traces"]["exporters"] == [
        "otlphttp/traces",
        "spanmetrics",
    ]
    without = collector_config("search", PIPELINES, None)
    assert "otlphttp/traces" not in without["exporters"]
    assert without["service"]["pipelines"]["traces"]["exporters"] == ["debug", "spanmetrics"]
    assert without["service"]["pipelines"]["metrics/spanmetrics"]["exporters"] == ["prometheus"]


def test_a_config_change_rolls_the_pods() -> None:
    def config_hash(pipelines: list[TracedPipeline]) -> str:
        deployment = render_collector("search", pipelines, SETTINGS)[1]
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"]["penstock.dev/config-hash"]
        )

    assert config_hash(PIPELINES) != config_hash(PIPELINES[:1])
    assert config_hash(PIPELINES) == config_hash(list(reversed(PIPELINES)))


def test_config_map_holds_the_yaml_the_container_reads() -> None:
    config_map, deployment, _ = render_collector("search", PIPELINES, SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (arg,) = container["args"]
    mount = container["volumeMounts"][0]["mountPath"]
    key = arg.removeprefix(f"--config={mount}/")
    assert yaml.safe_load(config_map["data"][key]) == collector_config(
        "search", PIPELINES, SETTINGS.otlp_endpoint
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
