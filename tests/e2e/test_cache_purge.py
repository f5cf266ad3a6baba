"""`penstock cache purge` on a real control plane: one JSON patch raising the generation, the
operator rolling the stage onto keys no older entry has, and clear errors that patch nothing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Cluster, OperatorProcess, example, wait_for
from tests.e2e.test_pipeline_lifecycle import wait_ready

pytestmark = pytest.mark.e2e


def purge(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "penstock.cli", "cache", "purge", *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def generation_env(cluster: Cluster, namespace: str, deployment: str) -> str | None:
    body: dict[str, Any] = cluster.get("deployment", deployment, namespace) or {}
    for container in body.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        if container["name"] == "gateway":
            for env in container.get("env", []):
                if env["name"] == "PENSTOCK_GATEWAY_CACHE_GENERATION":
                    return str(env["value"])
    return None


def test_a_purge_raises_the_stage_generation_and_the_operator_rolls_it(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(yaml.safe_dump(example("rag")), namespace).returncode == 0
    wait_ready(cluster, "rag", namespace)
    assert generation_env(cluster, namespace, "rag-retrieve") is None  # generation 0: no flag
    template = cluster.get("deployment", "rag-retrieve", namespace)["spec"]["template"]

    for expected in (1, 2):
        done = purge(cluster, "rag", "-n", namespace)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{namespace}/rag stage retrieve: cache generation {expected}"
        stage = cluster.get("pipeline", "rag", namespace)["spec"]["stages"][0]
        assert stage["name"] == "retrieve" and stage["cache"]["generation"] == expected
        wait_for(
            lambda n=expected: generation_env(cluster, namespace, "rag-retrieve") == str(n),
            timeout=60,
            what=f"the retrieve gateway on cache generation {expected}",
        )
    rolled = cluster.get("deployment", "rag-retrieve", namespace)["spec"]["template"]
    assert rolled != template  # a new pod template: the pods roll, their tiers start empty
    wait_ready(cluster, "rag", namespace)


def test_a_purge_that_cannot_be_made_says_why_and_patches_nothing(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert cluster.apply(yaml.safe_dump(example("rag")), namespace).returncode == 0
    before = cluster.get("pipeline", "rag", namespace)["metadata"]["generation"]
    for args, message in (
        (["rag", "--stage", "generate"], "no caching stage 'generate' (caching stages: retrieve)"),
        (["missing"], f"Pipeline {namespace}/missing not found"),
    ):
        failed = purge(cluster, *args, "-n", namespace)
        assert failed.returncode == 1
        assert message in failed.stderr, failed.stderr
    assert cluster.get("pipeline", "rag", namespace)["metadata"]["generation"] == before
