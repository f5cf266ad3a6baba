"""The CLI as users run it: exit codes, messages naming document and field, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "penstock.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BAD = """\
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: good}
spec:
  stages: [{name: a, image: "a:1"}]
---
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: bad}
spec:
  stages:
    - {name: a, image: "a:1", dependsOn: [b]}
    - {name: b, image: "b:1", dependsOn: [a], cache: {ttlSeconds: -1}}
"""


def test_validate_examples_succeeds() -> None:
    files = sorted((ROOT / "examples").rglob("*.yaml"))
    result = run("validate", *map(str, files))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(files)  # one document each, all valid


def test_validate_names_document_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(BAD)
    result = run("validate", str(path))
    assert result.returncode == 1
    assert f"{path}#0 (good): valid" in result.stdout
    assert f"{path}#1 (bad): error: spec.stages[1].cache.ttlSeconds" in result.stderr
    assert "(got -1)" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_cycles_after_schema_errors_are_fixed(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BAD.replace("ttlSeconds: -1", "ttlSeconds: 5"))
    result = run("validate", str(path))
    assert result.returncode == 1
    assert "dependency cycle: a -> b -> a" in result.stderr


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: penstock.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: w}\n"
        "spec: {output: a, stages: [{name: a, image: x}, {name: unused, image: y}]}\n"
    )
    result = run("validate", str(path))
    assert result.returncode == 0
    assert "warning: spec.stages[1]" in result.stderr


def test_malformed_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    result = run("validate", str(path), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "invalid YAML" in result.stderr
    assert "line" in result.stderr
    assert "missing.yaml: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_render_prints_every_child(tmp_path: Path) -> None:
    result = run("render", str(ROOT / "examples" / "rag.yaml"), "--namespace", "demo")
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout)]
    assert kinds.count("Deployment") == 4  # 3 stages + router
    assert "Secret" not in kinds  # the operator creates it, with a random password
    assert "note: Secret demo/rag-cache (the Redis password) is not rendered" in result.stderr
    assert "ConfigMap" in kinds
    assert all(doc["metadata"]["namespace"] == "demo" for doc in yaml.safe_load_all(result.stdout))


def test_render_is_reproducible_for_gitops() -> None:
    files = [str(path) for path in sorted((ROOT / "examples").rglob("*.yaml"))]
    first, second = run("render", *files), run("render", *files)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_render_with_a_cache_password_file(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret-from-my-vault\n")
    args = ("render", str(ROOT / "examples" / "rag.yaml"), "--cache-password-file", str(password))
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "note:" not in first.stderr
    (secret,) = [doc for doc in yaml.safe_load_all(first.stdout) if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "rag-cache"
    assert secret["stringData"] == {"redis-password": "s3cret-from-my-vault"}


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "one line of 1 to 512"), (b"a\nb\n", "one line"), (b"x" * 600, "larger than"),
     (b"\xff\xfe", "not UTF-8")],
)  # fmt: skip
def test_render_refuses_a_bad_password_file(tmp_path: Path, content: bytes, needle: str) -> None:
    password = tmp_path / "password"
    password.write_bytes(content)
    result = run("render", str(ROOT / "examples" / "rag.yaml"), "--cache-password-file", str(password))  # fmt: skip
    assert result.returncode == 1
    assert needle in result.stderr and result.stdout == ""


def test_render_refuses_a_bad_namespace() -> None:
    result = run("render", str(ROOT / "examples" / "rag.yaml"), "--namespace", "Team_A")
    assert result.returncode == 2
    assert "--namespace 'Team_A' is not a DNS-1123 label" in result.stderr


def test_render_refuses_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BAD)
    result = run("render", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "bad" in result.stderr


def test_every_subcommand_has_help() -> None:
    for command in ("validate", "render", "crd", "operator"):
        result = run(command, "--help")
        assert result.returncode == 0, command
        assert "usage: penstock" in result.stdout


def test_passthrough_subcommands_have_their_own_help() -> None:
    for command in ("preload", "gateway", "router", "dev", "analyze"):
        result = run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: penstock {command}" in result.stdout


def test_a_pipelinerun_validates_naming_its_field_and_renders_its_job(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    good = (ROOT / "examples" / "pipelinerun.yaml").read_text()
    path.write_text(good + "---\n" + good.replace("name: rag-questions", "name: bad").replace(
        "parallelism: 4", "parallelism: 99"
    ))  # fmt: skip
    result = run("validate", str(path))
    assert result.returncode == 1
    assert f"{path}#0 (rag-questions): valid" in result.stdout
    assert f"{path}#1 (bad): error: spec.parallelism: " in result.stderr
    assert "(got 99)" in result.stderr
    rendered = run("render", str(ROOT / "examples" / "pipelinerun.yaml"), "--namespace", "ml")
    assert rendered.returncode == 0, rendered.stderr
    job = yaml.safe_load(rendered.stdout)
    assert (job["kind"], job["metadata"]["name"], job["spec"]["completions"]) == (
        "Job",
        "rag-questions-batch",
        4,
    )
