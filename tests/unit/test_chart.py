"""The Helm chart (charts/penstock): lint, rendered objects, RBAC, values schema, CRD copy.

Needs a helm v3 binary: $PENSTOCK_HELM, else bin/helm (`make tools`), else the tools cache,
else `helm` on PATH; the tests that run helm are skipped when none is found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from penstock.cli import main as penstock_main
from penstock.render.settings import DEFAULT_COLLECTOR_IMAGE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "penstock"
CRDS = {"Pipeline": "pipelines.penstock.dev", "PipelineRun": "pipelineruns.penstock.dev"}
DASHBOARD = CHART / "files" / "dashboards" / "penstock.json"
KUBE_VERSION = "1.34.0"
RELEASE = "penstock"
NAMESPACE = "penstock-system"
KEEP = "helm.sh/resource-policy"
TEMPLATE_ARGS = (
    "template",
    RELEASE,
    str(CHART),
    "--namespace",
    NAMESPACE,
    "--kube-version",
    KUBE_VERSION,
)

# Kinds whose schema is not part of Kubernetes (CRD-defined): kubernetes-validate cannot check them.
CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}

# Everything optional switched on, with the pass-through fields filled in.
ALL_FEATURES: dict[str, Any] = {
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "regcred"}],
    "priceTable": {
        "prices": {"cpuCoreHour": 0.04, "memoryGiBHour": "0.005", "gpuHour": {"default": 2.5}}
    },
    "prometheus": {"url": "http://prometheus-operated.monitoring:9090"},
    "otlp": {"endpoint": "http://jaeger.observability:4318"},
    "extraEnv": [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "replicaCount": 2,
    "peering": {"enabled": True},
    "serviceAccount": {"annotations": {"example.com/role": "penstock"}},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"example.com/tier": "control-plane"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                        ]
                    }
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/component": "operator"}
                        },
                    },
                }
            ]
        },
    },
    "priorityClassName": "system-cluster-critical",
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Penstock"}},
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"cidrs": ["10.0.0.10/32"]},
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "extraEgress": [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 9090}],
            }
        ],
    },
}

# Value sets every structural test runs over.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "namespaced-strict": {"watchNamespaces": ["team-a"], "rbac": {"watchCRDs": False}},
    "peering-cluster": {"replicaCount": 2, "peering": {"enabled": True}},
    "peering-namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "replicaCount": 3,
        "peering": {"enabled": True, "name": "penstock-ha"},
    },
    "all-features": ALL_FEATURES,
    "jaeger": {"jaeger": {"enabled": True}, "networkPolicy": ALL_FEATURES["networkPolicy"]},
    "all-features-namespaced": {**ALL_FEATURES, "watchNamespaces": ["team-a"]},
}


# ----------------------------------------------------------------------------- helpers


def find_helm() -> str | None:
    candidates = [os.environ.get("PENSTOCK_HELM", ""), str(ROOT / "bin" / "helm")]
    candidates += [
        str(p) for p in sorted(Path.home().glob(".cache/penstock-tools/helm-v3*/bin/helm"))
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    binary = find_helm()
    if binary is None:
        pytest.skip("helm binary not found: run `make tools` or set PENSTOCK_HELM=/path/to/helm")
    return binary


def run_helm(
    helm: str, *args: str, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm with the values (written to a temporary file) appended as -f."""
    command = [helm, *args]
    path = None
    if values is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(values, handle)
            path = handle.name
        command += ["-f", path]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        if path:
            os.unlink(path)


def template(
    helm: str, values: dict[str, Any] | None = None, *, include_crds: bool = False
) -> list[dict[str, Any]]:
    args = list(TEMPLATE_ARGS)
    if include_crds:
        args.append("--include-crds")
    result = run_helm(helm, *args, values=values or {})
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(helm: str, values: dict[str, Any]) -> str:
    result = run_helm(helm, *TEMPLATE_ARGS, values=values)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in of_kind(docs, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """Flatten rules to (apiGroup, resource, verb, resourceName or '')."""
    flat = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        flat.add((group, resource, verb, name))
    return flat


def penstock_crd_text(capsys: pytest.CaptureFixture[str], kind: str = "Pipeline") -> str:
    capsys.readouterr()
    assert penstock_main(["crd", "--kind", kind]) == 0
    return capsys.readouterr().out


# The operator's rules on namespaced objects (the same in a ClusterRole and in each Role).
def _expand(group: str, resources: list[str], verbs: list[str]) -> set[tuple[str, str, str, str]]:
    return {(group, r, v, "") for r in resources for v in verbs}


CRUD = ["get", "list", "watch", "create", "patch", "delete"]
OPERATOR_RULES = (
    _expand("penstock.dev", ["pipelines"], ["get", "list", "watch", "patch"])
    | _expand("penstock.dev", ["pipelines/status"], ["get", "patch"])
    | _expand("penstock.dev", ["pipelineruns"], ["get", "list", "watch", "patch"])
    | _expand("penstock.dev", ["pipelineruns/status"], ["get", "patch"])
    | _expand("batch", ["jobs"], ["get", "list", "watch", "create"])
    | _expand("apps", ["deployments"], CRUD)
    | _expand("autoscaling", ["horizontalpodautoscalers"], CRUD)
    | _expand("", ["services", "configmaps", "persistentvolumeclaims"], CRUD)
    | _expand("", ["secrets"], ["get", "create", "delete"])
    | _expand("", ["pods"], ["list"])
    | _expand("", ["events"], ["create", "patch"])
)
CRD_RULES = _expand("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"])


def peering_rules(resource: str, name: str) -> set[tuple[str, str, str, str]]:
    return _expand("kopf.dev", [resource], ["list", "watch"]) | {
        ("kopf.dev", resource, "get", name),
        ("kopf.dev", resource, "patch", name),
    }


# ----------------------------------------------------------------------------- CRD copy


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_chart_crd_copies_are_penstock_crd_output(
    capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    copy = CHART / "files" / f"{CRDS[kind]}.yaml"
    assert copy.read_text() == penstock_crd_text(capsys, kind), (
        f"{copy.relative_to(ROOT)} differs from `penstock crd`: run hack/sync-chart-crd.sh"
    )
    assert (ROOT / "crds" / f"{CRDS[kind]}.yaml").read_text() == copy.read_text()


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_rendered_crd_is_penstock_crd_plus_keep(
    helm: str, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    expected = yaml.safe_load(penstock_crd_text(capsys, kind))
    crd = one(template(helm), "CustomResourceDefinition", CRDS[kind])
    annotations = crd["metadata"].pop("annotations")
    assert annotations.pop(KEEP) == "keep"
    assert not annotations
    assert crd == expected


def test_crds_install_false_renders_no_crd(helm: str) -> None:
    docs = template(helm, {"crds": {"install": False}})
    assert not of_kind(docs, "CustomResourceDefinition")
    assert of_kind(docs, "Deployment")


def test_kopf_peering_crds_are_in_the_crds_directory(helm: str) -> None:
    docs = template(helm, include_crds=True)
    names = {d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")}
    assert names == {
        "pipelines.penstock.dev",
        "pipelineruns.penstock.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    scopes = {
        d["spec"]["names"]["kind"]: d["spec"]["scope"]
        for d in of_kind(docs, "CustomResourceDefinition")
    }
    assert scopes["ClusterKopfPeering"] == "Cluster"
    assert scopes["KopfPeering"] == "Namespaced"


# ----------------------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("variant", ["defaults", "namespaced", "all-features"])
def test_helm_lint(helm: str, variant: str) -> None:
    result = run_helm(
        helm, "lint", str(CHART), "--strict", "--namespace", NAMESPACE, values=VARIANTS[variant]
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate_against_kubernetes_schemas(helm: str, variant: str) -> None:
    docs = template(helm, VARIANTS[variant], include_crds=True)
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {error.path}")
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_standard_labels_on_every_object(helm: str, variant: str) -> None:
    for doc in template(helm, VARIANTS[variant]):
        if doc["kind"] == "CustomResourceDefinition":
            continue  # verbatim `penstock crd`
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "penstock", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("penstock-")
        assert "app.kubernetes.io/version" in labels


# ----------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"image": {"tagg": "1.0"}}, "tagg"),
        ({"networkPolicy": {"apiServer": {"cidr": "10.0.0.1/32"}}}, "cidr"),
        ({"serviceMonitor": {"enable": True}}, "enable"),
        ({"securityContext": {"readOnlyRootFileSystem": True}}, "readOnlyRootFileSystem"),
        ({"affinity": {"nodeAfinity": {}}}, "nodeAfinity"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"crds": {"install": "yes"}}, "/crds/install"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"log": {"level": "verbose"}}, "/log/level"),
        ({"metrics": {"port": 80000}}, "/metrics/port"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "/resources/requests/cpu"),
        ({"priceTable": {"prices": {"cpuCoreHour": -1}}}, "/priceTable/prices/cpuCoreHour"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(
    helm: str, values: dict[str, Any], named: str
) -> None:
    error = template_error(helm, values)
    assert "values don't meet the specifications of the schema" in error, error
    assert named in error, error


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "replicaCount=2 needs peering.enabled=true"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}},
            "serviceMonitor.enabled=true needs metrics.enabled=true",
        ),
        ({"metrics": {"port": 8081}}, "metrics.port and health.port must differ"),
        ({"networkPolicy": {"enabled": True}}, "needs networkPolicy.apiServer.cidrs"),
        (
            {"priceTable": {"prices": {"cpuCoreHour": 1}, "existingConfigMap": "prices"}},
            "either priceTable.prices or priceTable.existingConfigMap",
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    helm: str, values: dict[str, Any], message: str
) -> None:
    assert message in template_error(helm, values)


def _object_schemas(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, child in node.items():
            yield from _object_schemas(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _object_schemas(child, f"{path}/{index}")


def test_schema_is_closed_at_every_object_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _object_schemas(schema, ""):
        if path == "/properties/global":
            continue  # Helm passes a parent chart's globals to every subchart
        extra = node.get("additionalProperties")
        if "properties" in node:
            assert extra is False, f"{path}: additionalProperties must be false"
        else:  # a map: its values must be typed
            assert isinstance(extra, dict), (
                f"{path}: an object schema with no properties must type its values"
            )


def _value_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "properties" in sub:
            yield from _value_paths(sub, f"{path}.")
        else:
            yield path


def test_readme_documents_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [path for path in _value_paths(schema) if f"| `{path}` |" not in readme]
    assert not missing, f"charts/penstock/README.md does not document: {missing}"


def test_every_default_value_is_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, child in value.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            sub = node["properties"][key]
            if isinstance(child, dict) and "properties" in sub:
                walk(child, sub, f"{path}{key}.")

    walk(values, schema, "")


# ----------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_has_no_wildcards_and_no_privilege_verbs(helm: str, variant: str) -> None:
    docs = template(helm, VARIANTS[variant])
    roles = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    assert roles
    for role in roles:
        for group, resource, verb, _ in rules_of(role):
            assert "*" not in (group, resource, verb), f"{role['metadata']['name']}: wildcard"
            assert verb not in {"escalate", "bind", "impersonate"}, verb
            assert resource not in {"pods/exec", "nodes", "namespaces", "serviceaccounts/token"}


def test_rbac_cluster_wide_by_default(helm: str) -> None:
    docs = template(helm)
    assert not of_kind(docs, "Role")
    assert not of_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    assert rules_of(role) == OPERATOR_RULES | CRD_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_rbac_namespaced_has_a_role_per_watched_namespace(helm: str) -> None:
    docs = template(helm, {"watchNamespaces": ["team-a", "team-b"]})
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == OPERATOR_RULES
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # The only cluster-scoped grant: reading CRDs (kopf's runtime observation).
    cluster_role = one(docs, "ClusterRole")
    assert rules_of(cluster_role) == CRD_RULES
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]


def test_rbac_fully_namespaced_without_crd_watch(helm: str) -> None:
    docs = template(helm, {"watchNamespaces": ["team-a"], "rbac": {"watchCRDs": False}})
    assert not of_kind(docs, "ClusterRole")
    assert not of_kind(docs, "ClusterRoleBinding")
    assert len(of_kind(docs, "Role")) == 1


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    docs = template(helm, {"rbac": {"create": False}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not of_kind(docs, kind)


def test_existing_service_account(helm: str) -> None:
    docs = template(helm, {"serviceAccount": {"create": False, "name": "ops-penstock"}})
    assert not of_kind(docs, "ServiceAccount")
    for deployment in of_kind(docs, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops-penstock"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-penstock"


# ----------------------------------------------------------------------------- operator Deployment


def test_deployment_defaults(helm: str) -> None:
    docs = template(helm)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/penstock-dev/penstock:0.1.0"
    assert container["args"] == ["operator"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    env = env_of(container)
    assert env == {
        "POD_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
        "PENSTOCK_NAMESPACES": "",
        "PENSTOCK_LOG_LEVEL": "INFO",
        "PENSTOCK_LOG_FORMAT": "json",
        "PENSTOCK_OPERATOR_IMAGE": container["image"],
        "PENSTOCK_REDIS_IMAGE": "docker.io/library/redis:7.4.1-alpine",
        # The chart and the operator agree on the collector release the tests validate.
        "PENSTOCK_COLLECTOR_IMAGE": DEFAULT_COLLECTOR_IMAGE,
        "PENSTOCK_RESYNC_SECONDS": "60",
        "PENSTOCK_METRICS_PORT": "8080",
        "PENSTOCK_HEALTH_PORT": "8081",
    }
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_security_context_is_restricted(helm: str, variant: str) -> None:
    for deployment, container in containers(template(helm, VARIANTS[variant])):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context.get("privileged") is not True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_values_reach_the_operator_environment(helm: str) -> None:
    docs = template(
        helm,
        {
            "watchNamespaces": ["team-a", "team-b"],
            "log": {"level": "DEBUG", "format": "text"},
            "resyncSeconds": 30,
            "metrics": {"port": 9090},
            "health": {"port": 9091},
            "redisImage": "registry.example/redis:7",
            "image": {"repository": "registry.example/penstock", "tag": "1.2.3"},
            "prometheus": {"url": "http://prometheus:9090", "tunerIntervalSeconds": 2},
            "otlp": {"endpoint": "http://collector:4318"},
            "collectorImage": "registry.example/otelcol:1",
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
        },
    )
    (_, container) = next(containers(docs))
    env = env_of(container)
    assert env["PENSTOCK_NAMESPACES"] == "team-a,team-b"
    assert env["PENSTOCK_LOG_LEVEL"] == "DEBUG"
    assert env["PENSTOCK_LOG_FORMAT"] == "text"
    assert env["PENSTOCK_RESYNC_SECONDS"] == "30"
    assert env["PENSTOCK_METRICS_PORT"] == "9090"
    assert env["PENSTOCK_HEALTH_PORT"] == "9091"
    assert env["PENSTOCK_REDIS_IMAGE"] == "registry.example/redis:7"
    assert env["PENSTOCK_OPERATOR_IMAGE"] == "registry.example/penstock:1.2.3"
    assert container["image"] == "registry.example/penstock:1.2.3"
    assert env["PENSTOCK_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["PENSTOCK_TUNER_INTERVAL_SECONDS"] == "2"
    assert env["PENSTOCK_TUNER_WINDOW_SECONDS"] == "300"
    assert env["PENSTOCK_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["PENSTOCK_COLLECTOR_IMAGE"] == "registry.example/otelcol:1"
    assert env["EXTRA"] == "1"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "metrics": 9090,
        "health": 9091,
    }


def test_image_digest_pins_operator_and_preload_image(helm: str) -> None:
    digest = "sha256:" + "b" * 64
    (_, container) = next(containers(template(helm, {"image": {"digest": digest}})))
    assert container["image"] == f"ghcr.io/penstock-dev/penstock:0.1.0@{digest}"
    assert env_of(container)["PENSTOCK_OPERATOR_IMAGE"] == container["image"]


def test_metrics_disabled(helm: str) -> None:
    docs = template(helm, {"metrics": {"enabled": False}})
    assert not of_kind(docs, "Service")
    (_, container) = next(containers(docs))
    assert env_of(container)["PENSTOCK_METRICS_PORT"] == "0"
    assert [p["name"] for p in container["ports"]] == ["health"]


def test_price_table_config_map_is_mounted(helm: str) -> None:
    prices = {"cpuCoreHour": 0.04, "memoryGiBHour": "0.005", "gpuHour": {"default": 2.5, "H100": 6}}
    docs = template(helm, {"priceTable": {"prices": prices}})
    config_map = one(docs, "ConfigMap")
    assert yaml.safe_load(config_map["data"]["prices.yaml"]) == prices
    deployment, container = next(containers(docs))
    path = env_of(container)["PENSTOCK_PRICE_TABLE"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert path == f"{mounts['prices']}/prices.yaml"
    assert volumes["prices"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "checksum/prices" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_price_table_existing_config_map(helm: str) -> None:
    docs = template(helm, {"priceTable": {"existingConfigMap": "my-prices"}})
    assert not of_kind(docs, "ConfigMap")
    deployment, container = next(containers(docs))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["prices"]["configMap"]["name"] == "my-prices"
    assert env_of(container)["PENSTOCK_PRICE_TABLE"] == "/etc/penstock/prices/prices.yaml"


def test_no_price_table_by_default(helm: str) -> None:
    (_, container) = next(containers(template(helm)))
    assert "PENSTOCK_PRICE_TABLE" not in env_of(container)


def test_scheduling_values(helm: str) -> None:
    docs = template(helm, ALL_FEATURES)
    for deployment, _ in containers(docs):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == ALL_FEATURES["nodeSelector"]
        assert pod["tolerations"] == ALL_FEATURES["tolerations"]
        assert pod["affinity"] == ALL_FEATURES["affinity"]
        assert pod["priorityClassName"] == "system-cluster-critical"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert deployment["spec"]["template"]["metadata"]["labels"]["example.com/tier"] == (
            "control-plane"
        )


# ----------------------------------------------------------------------------- peering


def test_no_peering_by_default(helm: str) -> None:
    docs = template(helm)
    assert not of_kind(docs, "ClusterKopfPeering")
    assert not of_kind(docs, "KopfPeering")
    (_, container) = next(containers(docs))
    assert "PENSTOCK_PEERING" not in env_of(container)


def test_peering_cluster_wide(helm: str) -> None:
    docs = template(helm, {"replicaCount": 2, "peering": {"enabled": True}})
    deployments = of_kind(docs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == [
        f"{RELEASE}",
        f"{RELEASE}-standby-1",
    ]
    priorities = []
    for deployment in deployments:
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        assert env["PENSTOCK_PEERING"] == RELEASE
        assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        priorities.append(int(env["PENSTOCK_PRIORITY"]))
    assert priorities == [100, 99]
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in deployments]
    assert len(set(selectors)) == len(selectors), "Deployment selectors must not overlap"
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == RELEASE
    assert rules_of(one(docs, "ClusterRole")) == (
        OPERATOR_RULES | CRD_RULES | peering_rules("clusterkopfpeerings", RELEASE)
    )


def test_peering_namespaced(helm: str) -> None:
    docs = template(helm, VARIANTS["peering-namespaced"])
    assert len(of_kind(docs, "Deployment")) == 3
    priorities = sorted(int(env_of(c)["PENSTOCK_PRIORITY"]) for _, c in containers(docs))
    assert priorities == [98, 99, 100]
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"penstock-ha"}
    assert not of_kind(docs, "ClusterKopfPeering")
    for role in of_kind(docs, "Role"):
        assert rules_of(role) == OPERATOR_RULES | peering_rules("kopfpeerings", "penstock-ha")


# ----------------------------------------------------------------------------- optional features

FEATURES = {
    "serviceMonitor": lambda docs: of_kind(docs, "ServiceMonitor"),
    "dashboard": lambda docs: [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    ],
    "networkPolicy": lambda docs: of_kind(docs, "NetworkPolicy"),
    "jaeger": lambda docs: [
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-jaeger")
    ],
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_optional_feature_is_off_by_default_and_switches_on(helm: str, feature: str) -> None:
    assert not FEATURES[feature](template(helm))
    values: dict[str, Any] = {feature: {"enabled": True}}
    if feature == "networkPolicy":
        values[feature]["apiServer"] = {"cidrs": ["10.0.0.10/32"]}
    assert len(FEATURES[feature](template(helm, values))) == 1


def test_service_monitor_scrapes_the_metrics_service(helm: str) -> None:
    docs = template(helm, {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    service = one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True


def test_network_policy_limits_egress_to_api_server_and_dns(helm: str) -> None:
    docs = template(
        helm,
        {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.10/32"]}}},
    )
    policy = one(docs, "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    api, dns = policy["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    (ingress,) = policy["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {8080, 8081}


def test_network_policy_extra_egress(helm: str) -> None:
    docs = template(helm, ALL_FEATURES)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["egress"][2:] == ALL_FEATURES["networkPolicy"]["extraEgress"]
    assert policy["ingress"][0]["from"] == ALL_FEATURES["networkPolicy"]["ingressFrom"]


# ----------------------------------------------------------------------------- dashboard

DASHBOARD_METRICS = [
    "penstock_reconcile_total",
    "penstock_reconcile_duration_seconds_bucket",
    "penstock_stage_requests_total",
    "penstock_stage_request_duration_seconds_bucket",
    "penstock_stage_inflight_requests",
    "penstock_stage_cache_lookups_total",
    "penstock_stage_coalesced_requests_total",
    "penstock_stage_batch_size_bucket",
    "penstock_stage_cost_usd_total",
    "penstock_stage_hourly_cost_usd",
    "penstock_stage_recommended_replicas",
    "penstock_pipeline_requests_total",
    "penstock_pipeline_request_duration_seconds_bucket",
]


def test_dashboard_config_map_holds_a_grafana_dashboard(helm: str) -> None:
    docs = template(helm, {"dashboard": {"enabled": True}})
    (config_map,) = FEATURES["dashboard"](docs)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pipeline", "cost_center"} <= variables
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    expressions = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in DASHBOARD_METRICS:
        assert metric in expressions, f"no panel uses {metric}"
    for panel in panels:
        assert panel["targets"], panel["title"]
        stage_level = any("penstock_stage_" in t["expr"] for t in panel["targets"])
        if stage_level:
            assert all('pipeline=~"$pipeline"' in t["expr"] for t in panel["targets"])
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("throughput", "p50", "p95", "cache hit ratio", "batch size", "cost"):
        assert word in titles, word


def test_jaeger_receives_the_operator_traces_unless_otlp_endpoint_is_set(helm: str) -> None:
    docs = template(helm, {"jaeger": {"enabled": True, "maxTraces": 1000}})
    jaeger = [d for d in docs if d["metadata"]["name"].endswith("-jaeger")]
    assert sorted(d["kind"] for d in jaeger) == ["ConfigMap", "Deployment", "Service"]
    service = one(jaeger, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["otlp-http"] == 4318
    config = yaml.safe_load(one(jaeger, "ConfigMap")["data"]["config.yaml"])
    assert config["extensions"]["jaeger_storage"]["backends"]["memstore"]["memory"] == {
        "max_traces": 1000
    }
    operator = next(c for d, c in containers(docs) if c["name"] == "operator")
    expected = f"http://{jaeger[0]['metadata']['name']}.{NAMESPACE}.svc:4318"
    assert env_of(operator)["PENSTOCK_OTLP_ENDPOINT"] == expected
    docs = template(helm, {"jaeger": {"enabled": True}, "otlp": {"endpoint": "http://o:4318"}})
    operator = next(c for d, c in containers(docs) if c["name"] == "operator")
    assert env_of(operator)["PENSTOCK_OTLP_ENDPOINT"] == "http://o:4318"
