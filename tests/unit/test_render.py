"""Rendering is pure and deterministic; golden files pin its output; every pod is restricted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api.validation import validate_document
from penstock.documents import dump_documents
from penstock.render import PipelineRef, RenderSettings, render_children, render_secret
from penstock.render.meta import object_name
from tests.support import pipeline_examples

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
# The examples, and pipelines kept for a feature the examples do not show (e.g. variants).
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = [path for path in pipeline_examples() if path.parent.name == "examples"] + sorted(
    FIXTURES.glob("*.yaml")
)
SETTINGS = RenderSettings(operator_image="penstock:test", redis_image="redis:test")
UID = "00000000-0000-4000-8000-000000000001"
DESIGN_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "penstock.dev/pipeline",
    "penstock.dev/cost-center",
    "penstock.dev/team",
}


def _render(path: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        result = validate_document(doc)
        assert result.spec is not None, result.summary()
        ref = PipelineRef(doc["metadata"]["name"], doc["metadata"].get("namespace", "demo"), UID)
        secret = render_secret(ref, result.spec, "fixed-password-for-golden-files")
        manifests += ([secret] if secret else []) + render_children(ref, result.spec, SETTINGS)
    return manifests


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_matches_golden_file(example: Path) -> None:
    text = dump_documents(_render(example))
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("PENSTOCK_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run with PENSTOCK_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{golden.name} differs: review, then PENSTOCK_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_is_deterministic(example: Path) -> None:
    assert dump_documents(_render(example)) == dump_documents(_render(example))


def _pod_specs(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"]["spec"] for m in manifests if m["kind"] == "Deployment"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_pod_meets_the_restricted_standard(example: Path) -> None:
    manifests = _render(example)
    owned = {c["metadata"]["name"] for c in manifests if c["kind"] == "PersistentVolumeClaim"}
    for pod in _pod_specs(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod
        assert "hostNetwork" not in pod
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["readOnlyRootFilesystem"] is True
            for mount in container.get("volumeMounts", []):
                volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
                # Writable mounts are emptyDirs or the Pipeline's own claims (the disk tier,
                # mounted in the gateway only); config is mounted read-only.
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                assert (
                    "emptyDir" in volume
                    or (mount.get("readOnly") and "configMap" in volume)
                    or (claim in owned and container["name"] == "gateway")
                )
                assert "hostPath" not in volume


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_design_labels_on_every_object_and_pod_template(example: Path) -> None:
    for manifest in _render(example):
        assert set(manifest["metadata"]["labels"]) >= DESIGN_LABELS, manifest["metadata"]["name"]
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == UID
        is_stage = manifest["metadata"]["labels"]["app.kubernetes.io/component"] not in (
            "router",
            "topology",
            "cache",
        )
        if manifest["kind"] in ("Deployment", "Service", "HorizontalPodAutoscaler") and is_stage:
            assert "penstock.dev/stage" in manifest["metadata"]["labels"]
        if manifest["kind"] == "Deployment":
            template_labels = manifest["spec"]["template"]["metadata"]["labels"]
            expected = DESIGN_LABELS | ({"penstock.dev/stage"} if is_stage else set())
            assert expected <= set(template_labels)
            if manifest["metadata"]["labels"]["app.kubernetes.io/component"] == "cache":
                assert manifest["spec"]["replicas"] == 1  # the managed Redis: no HPA
            else:
                assert "replicas" not in manifest["spec"], "the HPA owns replicas"


def test_rag_example_wires_model_cache_and_hpa() -> None:
    manifests = {
        (m["kind"], m["metadata"]["name"]): m for m in _render(ROOT / "examples" / "rag.yaml")
    }
    embed = manifests[("Deployment", "rag-embed")]["spec"]["template"]["spec"]
    preload = embed["initContainers"][0]
    assert preload["image"] == "penstock:test"
    assert preload["args"][:3] == [
        "preload",
        "--uri",
        "https://models.example.com/minilm-l6-v2.tar.gz",
    ]
    assert "--sha256" in preload["args"]
    stage = embed["containers"][0]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in stage["volumeMounts"]
    retrieve = manifests[("Deployment", "rag-retrieve")]["spec"]["template"]["spec"]
    cache = next(c for c in retrieve["containers"] if c["name"] == "cache")
    assert cache["args"][cache["args"].index("--bind") + 1] == "127.0.0.1"
    assert cache["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "rag-cache"
    hpa = manifests[("HorizontalPodAutoscaler", "rag-retrieve")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 10)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert ("Secret", "rag-cache") in manifests
    assert ("ConfigMap", "rag-topology") in manifests


def test_long_names_are_shortened_with_a_stable_hash() -> None:
    long = object_name("p" * 50, "stage-with-a-long-name")
    assert len(long) <= 63
    assert long == object_name("p" * 50, "stage-with-a-long-name")
    assert long != object_name("p" * 50, "stage-with-a-long-namf")
    assert object_name("rag", "embed") == "rag-embed"


def test_no_secret_without_cache() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    for stage in doc["spec"]["stages"]:
        stage.pop("cache", None)
    result = validate_document(doc)
    assert result.spec is not None
    assert render_secret(PipelineRef("rag", "demo", UID), result.spec, "x") is None


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_rendered_objects_pass_the_kubernetes_schemas(example: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for manifest in _render(example):
        # Raises ValidationError naming the field when a manifest breaks the 1.34 schema.
        kubernetes_validate.validate(manifest, "1.34.0", strict=True)


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_gateway_fronts_stages_that_cache_batch_trace_or_warm_up() -> None:
    manifests = {
        (m["kind"], m["metadata"]["name"]): m for m in _render(ROOT / "examples" / "rag.yaml")
    }
    # rag has tracing enabled: every stage gets a gateway that owns the Service's port name.
    for stage in ("retrieve", "embed", "generate"):
        containers = _containers(manifests[("Deployment", f"rag-{stage}")])
        assert [p["name"] for p in containers["gateway"]["ports"]] == ["http", "admin"]
        assert containers["stage"]["ports"][0]["name"] == "stage"
        service = manifests[("Service", f"rag-{stage}")]
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    embed = _containers(manifests[("Deployment", "rag-embed")])["gateway"]
    env = {e["name"]: e.get("value") for e in embed["env"]}
    assert env["PENSTOCK_GATEWAY_BATCH_MAX_SIZE"] == "32"
    assert env["PENSTOCK_GATEWAY_BATCH_PATH"] == "/batch"
    assert env["PENSTOCK_GATEWAY_WARMUP_REQUESTS"] == "3"
    assert env["PENSTOCK_GATEWAY_UPSTREAM"] == "http://127.0.0.1:8080"
    assert env["PENSTOCK_GATEWAY_MODEL_VERSION"].startswith("53aa51")
    topology = manifests[("ConfigMap", "rag-topology")]["data"]
    assert topology["warmup-embed.json"] == '{"text": "warmup"}'
    retrieve = {
        e["name"]: e
        for e in _containers(manifests[("Deployment", "rag-retrieve")])["gateway"]["env"]
    }
    assert retrieve["PENSTOCK_GATEWAY_REDIS_URL"]["value"] == "redis://127.0.0.1:6379/0"
    assert retrieve["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "rag-cache"
    generate = {
        e["name"]: e.get("value")
        for e in _containers(manifests[("Deployment", "rag-generate")])["gateway"]["env"]
    }
    assert generate["PENSTOCK_GATEWAY_HOURLY_COST"] == "2.5"


def test_plain_stage_has_no_gateway() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "batch-embedding.yaml").read_text())
    result = validate_document(doc)
    assert result.spec is not None
    manifests = render_children(PipelineRef("batch-embed", "demo", UID), result.spec, SETTINGS)
    chunk = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "batch-embed-chunk" and m["kind"] == "Deployment"
    )
    assert list(_containers(chunk)) == ["stage"]
    assert _containers(chunk)["stage"]["ports"][0]["name"] == "http"
    service = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "batch-embed-chunk" and m["kind"] == "Service"
    )
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def test_with_the_tuner_on_every_stage_gets_a_gateway_to_measure_it() -> None:
    """The tuner reads the gateways' metrics: a plain stage is measured only behind one."""
    doc = yaml.safe_load((ROOT / "examples" / "batch-embedding.yaml").read_text())
    result = validate_document(doc)
    assert result.spec is not None
    settings = RenderSettings(operator_image="penstock:test", measure_every_stage=True)
    manifests = render_children(PipelineRef("batch-embed", "demo", UID), result.spec, settings)
    chunk = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "batch-embed-chunk" and m["kind"] == "Deployment"
    )
    assert list(_containers(chunk)) == ["stage", "gateway"]
    annotations = chunk["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    service = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "batch-embed-chunk" and m["kind"] == "Service"
    )
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "admin"]


def test_router_runs_the_topology_and_rolls_when_it_changes() -> None:
    manifests = {
        (m["kind"], m["metadata"]["name"]): m for m in _render(ROOT / "examples" / "rag.yaml")
    }
    router = manifests[("Deployment", "rag-router")]
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["router"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PENSTOCK_ROUTER_TOPOLOGY"] == "/etc/penstock/topology/topology.json"
    volume = router["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == "rag-topology"
    assert manifests[("Service", "rag-router")]["spec"]["ports"][0]["targetPort"] == "http"
    assert ("HorizontalPodAutoscaler", "rag-router") in manifests
    before = router["spec"]["template"]["metadata"]["annotations"]["penstock.dev/topology-hash"]
    doc = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    doc["spec"]["latencyBudgetMs"] = 900
    result = validate_document(doc)
    assert result.spec is not None
    changed = next(
        m
        for m in render_children(PipelineRef("rag", "demo", UID), result.spec, SETTINGS)
        if m["kind"] == "Deployment" and m["metadata"]["name"] == "rag-router"
    )
    assert (
        changed["spec"]["template"]["metadata"]["annotations"]["penstock.dev/topology-hash"]
        != before
    )


@pytest.mark.parametrize(("size_limit", "expected"), [(None, "10Gi"), ("50Gi", "50Gi"), (2**30, "1073741824")])  # fmt: skip
def test_preload_may_fill_the_model_volume_and_no_more(size_limit: Any, expected: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    model = doc["spec"]["stages"][1]["model"]
    if size_limit is not None:
        model["sizeLimit"] = size_limit
    result = validate_document(doc)
    assert result.spec is not None
    embed = next(
        o for o in render_children(PipelineRef("rag", "demo", UID), result.spec, RenderSettings())
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "rag-embed"
    )  # fmt: skip
    pod = embed["spec"]["template"]["spec"]
    args = pod["initContainers"][0]["args"]
    assert args[args.index("--max-bytes") + 1] == expected
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["emptyDir"]["sizeLimit"] == expected


@pytest.mark.parametrize(
    ("variant", "image", "args", "mode", "bounds", "timeout"),
    [
        ("light", "ghcr.io/penstock-dev/answer-light:1.0.0", ["--model", "small"], "fast", (2, 6), "5"),
        ("heavy", "ghcr.io/penstock-dev/answer:1.0.0", ["--model", "large"], "full", (1, 4), "20"),
    ],
)  # fmt: skip
def test_each_variant_runs_as_its_own_deployment_service_and_hpa(
    variant: str,
    image: str,
    args: list[str],
    mode: str,
    bounds: tuple[int, int],
    timeout: str,
) -> None:
    """fixtures/variants.yaml: answer's light variant overrides the stage, heavy inherits it."""
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in _render(FIXTURES / "variants.yaml")}
    name = f"qa-answer-{variant}"
    deployment = manifests[("Deployment", name)]
    labels = deployment["metadata"]["labels"]
    assert (labels["penstock.dev/stage"], labels["penstock.dev/variant"]) == ("answer", variant)
    assert labels["app.kubernetes.io/component"] == f"answer-{variant}"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/instance": "qa",
        "app.kubernetes.io/component": f"answer-{variant}",
        "penstock.dev/pipeline": "qa",
    }
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    service = manifests[("Service", name)]
    assert service["spec"]["selector"] == selector
    assert service["metadata"]["labels"] == labels
    hpa = manifests[("HorizontalPodAutoscaler", name)]["spec"]
    assert hpa["scaleTargetRef"]["name"] == name
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == bounds
    containers = _containers(deployment)
    stage = containers["stage"]
    assert (stage["image"], stage["args"]) == (image, args)
    env = {e["name"]: e.get("value") for e in stage["env"]}
    assert (env["PENSTOCK_STAGE"], env["PENSTOCK_VARIANT"], env["MODE"]) == (
        "answer",
        variant,
        mode,
    )
    gateway = {e["name"]: e.get("value") for e in containers["gateway"]["env"]}
    assert gateway["PENSTOCK_GATEWAY_STAGE"] == "answer"
    assert gateway["PENSTOCK_GATEWAY_VARIANT"] == variant
    assert gateway["PENSTOCK_GATEWAY_STAGE_IMAGE"] == image
    assert gateway["PENSTOCK_GATEWAY_TIMEOUT_SECONDS"] == timeout
    warmup = f"warmup-answer-{variant}.json"
    assert gateway["PENSTOCK_GATEWAY_WARMUP_BODY"] == f"/etc/penstock/warmup/{warmup}"
    assert manifests[("ConfigMap", "qa-topology")]["data"][warmup] == '{"text": "warmup"}'


def test_a_stage_with_variants_has_no_workload_of_its_own() -> None:
    manifests = _render(FIXTURES / "variants.yaml")
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        assert (kind, "qa-answer") not in names
        assert {
            (kind, "qa-answer-light"),
            (kind, "qa-answer-heavy"),
            (kind, "qa-retrieve"),
        } <= names
    assert "warmup-answer.json" not in manifests[0]["data"]
    retrieve = next(m for m in manifests if m["metadata"]["name"] == "qa-retrieve")
    assert "penstock.dev/variant" not in retrieve["metadata"]["labels"]
    env = [e["name"] for e in _containers(retrieve)["stage"]["env"]]
    assert "PENSTOCK_VARIANT" not in env
