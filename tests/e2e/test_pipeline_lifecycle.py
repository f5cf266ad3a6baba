"""A Pipeline's life on a real control plane: children, readiness, updates, repair, deletion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    STAGE_IMAGE,
    Cluster,
    OperatorProcess,
    example,
    updated_image,
    wait_for,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RAG = yaml.safe_dump(example("rag"))
CHILD_KINDS = ("deployments", "services", "horizontalpodautoscalers", "configmaps", "secrets")


def pipeline_status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    body = cluster.get("pipeline", name, namespace)
    return (body or {}).get("status", {})


def condition(cluster: Cluster, name: str, namespace: str, type_: str) -> dict[str, Any]:
    for item in pipeline_status(cluster, name, namespace).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def wait_ready(cluster: Cluster, name: str, namespace: str, timeout: float = 120) -> dict[str, Any]:
    """The status once Ready for the current spec: after a change, the last status (Ready for
    the previous generation) stays until the operator has reconciled and written the new one,
    which comes after the children changed."""

    def ready() -> dict[str, Any] | None:
        body = cluster.get("pipeline", name, namespace) or {}
        status: dict[str, Any] = body.get("status") or {}
        current = status.get("observedGeneration") == body.get("metadata", {}).get("generation")
        ready = any(
            item["type"] == "Ready" and item["status"] == "True"
            for item in status.get("conditions", [])
        )
        return status if current and ready else None

    status: dict[str, Any] = wait_for(
        ready, timeout=timeout, what=f"Pipeline {namespace}/{name} Ready for its generation"
    )
    return status


def children(cluster: Cluster, name: str, namespace: str) -> dict[str, list[Any]]:
    selector = f"penstock.dev/pipeline={name}"
    return {kind: cluster.items(kind, namespace, selector) for kind in CHILD_KINDS}


def test_crd_explain_and_printer_columns(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    explain = cluster.kubectl("explain", "pipeline.spec.stages").stdout
    assert "dependsOn" in explain and "Stages whose outputs this stage receives" in explain
    cache = cluster.kubectl("explain", "pipeline.spec.stages.cache").stdout
    assert "ttlSeconds" in cache and "Redis" in cache
    assert cluster.apply(RAG, namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    table = cluster.kubectl("get", "pl", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "READY", "STAGES", "BOTTLENECK", "COST/H", "AGE"]
    row = table.splitlines()[1].split()
    assert row[:3] == ["rag", "True", "3/3"]


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        (
            {"scaling": {"minReplicas": 5, "maxReplicas": 2}},
            "minReplicas must not exceed maxReplicas",
        ),
        ({"name": "Bad_Name"}, "spec.stages[0].name"),
        ({"privileged": True}, "unknown field"),
        ({"dependsOn": ["retrieve"]}, "a stage cannot depend on itself"),
        ({"cache": {"enabled": True, "maxMemory": "lots"}}, "maxMemory"),
    ],
)
def test_apiserver_rejects_invalid_pipelines(
    cluster: Cluster, crd: str, namespace: str, mutation: dict[str, Any], needle: str
) -> None:
    doc = yaml.safe_load(RAG)
    doc["spec"]["stages"][0].update(mutation)
    result = cluster.apply(yaml.safe_dump(doc), namespace)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert cluster.get("pipeline", "rag", namespace) is None


def test_duplicate_stage_names_are_rejected(cluster: Cluster, crd: str, namespace: str) -> None:
    doc = yaml.safe_load(RAG)
    doc["spec"]["stages"][1]["name"] = "retrieve"
    result = cluster.apply(yaml.safe_dump(doc), namespace)
    assert result.returncode != 0
    assert "Duplicate value" in result.stderr or "unique" in result.stderr, result.stderr


def test_semantic_errors_get_valid_false_an_event_and_no_children(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    doc = yaml.safe_load(RAG)
    doc["spec"]["stages"][0]["dependsOn"] = ["generate"]  # a cycle: beyond what CEL checks
    assert cluster.apply(yaml.safe_dump(doc), namespace).returncode == 0
    valid = wait_for(
        lambda: (
            condition(cluster, "rag", namespace, "Valid").get("status") == "False"
            and condition(cluster, "rag", namespace, "Valid")
        ),
        what="Valid=False",
    )
    assert valid["reason"] == "InvalidSpec"
    assert "dependency cycle: retrieve -> generate -> retrieve" in valid["message"]
    events = wait_for(
        lambda: [
            e
            for e in cluster.items("events", namespace)
            if e["reason"] == "InvalidSpec" and e["type"] == "Warning"
        ],
        what="a Warning Event",
    )
    assert "spec.stages[0].dependsOn" in events[0]["message"]
    assert all(items == [] for items in children(cluster, "rag", namespace).values())


def test_valid_pipeline_gets_children_pods_and_ready_status(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(RAG, namespace).returncode == 0
    status = wait_ready(cluster, "rag", namespace)
    meta = cluster.get("pipeline", "rag", namespace)["metadata"]
    uid = meta["uid"]
    # No finalizer: a Pipeline can be deleted even while the operator is not running.
    assert not meta.get("finalizers")
    found = children(cluster, "rag", namespace)
    assert sorted(d["metadata"]["name"] for d in found["deployments"]) == [
        "rag-embed",
        "rag-generate",
        "rag-retrieve",
        "rag-router",
    ]
    assert len(found["services"]) == 4 and len(found["horizontalpodautoscalers"]) == 4
    assert [c["metadata"]["name"] for c in found["configmaps"]] == ["rag-topology"]
    assert [s["metadata"]["name"] for s in found["secrets"]] == ["rag-cache"]
    for items in found.values():
        for item in items:
            labels = item["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "penstock-operator"
            assert labels["penstock.dev/cost-center"] == "search-team"
            owner = item["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"], owner["controller"]) == ("Pipeline", uid, True)
    pods = cluster.items("pods", namespace, "penstock.dev/pipeline=rag")
    assert len(pods) == 4  # 3 stages and the router
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"].get("podIP")
        assert pod["spec"]["nodeName"]
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["embed"]["readyReplicas"] == 1 and stages["embed"]["desiredReplicas"] == 1
    assert status["routerUrl"] == f"http://rag-router.{namespace}.svc:80"
    assert (
        status["observedGeneration"]
        == cluster.get("pipeline", "rag", namespace)["metadata"]["generation"]
    )
    assert float(status["hourlyCost"]) > 2.5  # generate's override alone is 2.50


def test_spec_update_rolls_and_removed_stage_goes(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(RAG, namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    doc = yaml.safe_load(RAG)
    new_image = updated_image(doc["spec"]["stages"][0])
    doc["spec"]["stages"][0]["image"] = new_image
    doc["spec"]["stages"] = [s for s in doc["spec"]["stages"] if s["name"] != "embed"]
    doc["spec"]["stages"][-1]["dependsOn"] = ["retrieve"]
    assert cluster.apply(yaml.safe_dump(doc), namespace).returncode == 0

    def rolled() -> bool:
        deployment = cluster.get("deployment", "rag-retrieve", namespace) or {}
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        replicasets = cluster.items(
            "replicasets", namespace, "app.kubernetes.io/component=retrieve"
        )
        return image == new_image and len(replicasets) == 2

    wait_for(rolled, what=f"retrieve rolled to {new_image} (a second ReplicaSet)")
    wait_for(
        lambda: all(
            cluster.get(kind, "rag-embed", namespace) is None
            for kind in ("deployment", "service", "horizontalpodautoscaler")
        ),
        what="the removed stage's children to go",
    )
    status = wait_ready(cluster, "rag", namespace)
    assert [s["name"] for s in status["stages"]] == ["retrieve", "generate"]


def test_hand_edits_and_deletions_are_repaired(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(RAG, namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    cluster.kubectl("delete", "service", "rag-embed", "-n", namespace)
    cluster.kubectl(
        "set", "image", "deployment/rag-generate", "stage=evil.example/miner:1", "-n", namespace
    )
    cluster.kubectl(
        "patch",
        "hpa",
        "rag-retrieve",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"maxReplicas":99}}',
    )
    wait_for(lambda: cluster.get("service", "rag-embed", namespace), what="Service recreated")
    wanted_image = yaml.safe_load(RAG)["spec"]["stages"][2]["image"]

    def restored() -> bool:
        deployment = cluster.get("deployment", "rag-generate", namespace) or {}
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        hpa = cluster.get("hpa", "rag-retrieve", namespace) or {}
        return image == wanted_image and hpa["spec"]["maxReplicas"] == 10

    wait_for(restored, timeout=60, what="image and maxReplicas restored")


def test_deleting_the_pipeline_garbage_collects_every_child(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(RAG, namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    cluster.kubectl("delete", "pipeline", "rag", "-n", namespace, "--wait=true", timeout=120)
    wait_for(
        lambda: (
            all(items == [] for items in children(cluster, "rag", namespace).values())
            and cluster.items("pods", namespace, "penstock.dev/pipeline=rag") == []
        ),
        timeout=120,
        what="garbage collection of every child and pod",
    )


def test_restricted_namespace_admits_every_generated_pod(
    cluster: Cluster, operator: OperatorProcess, restricted_namespace: str
) -> None:
    namespace = restricted_namespace
    # A privileged pod is refused here, so the namespace really enforces.
    refused = cluster.kubectl(
        "run",
        "probe",
        "-n",
        namespace,
        "--image=busybox",
        "--privileged",
        "--restart=Never",
        check=False,
    )
    assert refused.returncode != 0 and "restricted" in refused.stderr
    both = example("batch-embedding")
    assert cluster.apply(RAG, namespace).returncode == 0
    assert cluster.apply(both, namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    wait_ready(cluster, "batch-embed", namespace)
    pods = cluster.items("pods", namespace, "app.kubernetes.io/managed-by=penstock-operator")
    # rag: 3 stages + router; batch-embed: chunk, 2 embed (minReplicas 2) + router; the
    # namespace's OpenTelemetry collector (rag traces)
    assert len(pods) == 4 + 4 + 1
    failed = [e for e in cluster.items("events", namespace) if e["reason"] == "FailedCreate"]
    assert failed == []


def test_render_output_passes_server_side_dry_run(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    rendered = subprocess.run(
        [
            sys.executable,
            "-m",
            "penstock.cli",
            "render",
            "--namespace",
            namespace,
            *map(str, sorted((ROOT / "examples").rglob("*.yaml"))),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "-f", "-", stdin=rendered, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(
        [d for d in yaml.safe_load_all(rendered) if d]
    )


def test_each_variant_is_a_workload_and_dropping_variants_goes_back_to_one(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    if STAGE_IMAGE:
        # The fixture's variant images are not built for a cluster that runs real containers;
        # the kwok control plane (make test) runs this test.
        pytest.skip("variant images exist only as names on the local control plane")
    doc = yaml.safe_load((ROOT / "tests" / "unit" / "fixtures" / "variants.yaml").read_text())
    assert cluster.apply(yaml.safe_dump(doc), namespace).returncode == 0
    status = wait_ready(cluster, "qa", namespace)
    found = children(cluster, "qa", namespace)
    workloads = ["qa-answer-heavy", "qa-answer-light", "qa-retrieve"]
    assert sorted(d["metadata"]["name"] for d in found["deployments"]) == [*workloads, "qa-router"]
    hpas = sorted(h["metadata"]["name"] for h in found["horizontalpodautoscalers"])
    assert hpas == [*workloads, "qa-router"]
    light = cluster.get("deployment", "qa-answer-light", namespace)
    assert light["spec"]["template"]["metadata"]["labels"]["penstock.dev/variant"] == "light"
    stages = {s["name"]: s for s in status["stages"]}
    variants = {v["name"]: v for v in stages["answer"]["variants"]}
    assert variants["light"]["readyReplicas"] == 2 and variants["heavy"]["readyReplicas"] == 1
    assert stages["answer"]["readyReplicas"] == 3  # the stage is the sum of its variants
    topology = cluster.get("configmap", "qa-topology", namespace)["data"]["topology.json"]
    assert '"variantPolicy"' in topology and f"qa-answer-light.{namespace}.svc" in topology

    answer = doc["spec"]["stages"][1]
    del answer["variants"], answer["variantPolicy"]
    assert cluster.apply(yaml.safe_dump(doc), namespace).returncode == 0
    wait_for(
        lambda: all(
            cluster.get(kind, f"qa-answer-{variant}", namespace) is None
            for kind in ("deployment", "service", "horizontalpodautoscaler")
            for variant in ("light", "heavy")
        ),
        what="the variants' children to go",
    )
    status = wait_ready(cluster, "qa", namespace)
    assert cluster.get("deployment", "qa-answer", namespace) is not None
    assert "variants" not in {s["name"]: s for s in status["stages"]}["answer"]
