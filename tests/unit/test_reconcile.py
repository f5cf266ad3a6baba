"""The reconcile loop against an in-memory API (a boundary fake: unit level only).

The real apiserver is exercised in tests/e2e.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable
from penstock.api.validation import validate_spec
from penstock.controller.kube import KubeError
from penstock.controller.reconcile import Reconciler
from penstock.controller.settings import OperatorSettings
from penstock.controller.status import stage_statuses
from penstock.controller.tuning import ThroughputTuning, _ready_replicas
from penstock.render import RenderSettings
from penstock.render.collector import COLLECTOR_NAME

ROOT = Path(__file__).resolve().parents[2]


class FakeKube:
    """Stores objects by (kind, namespace, name); counts writes like apiserver_request_total."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.fail_apply: str | None = None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        wanted = dict(part.split("=") for part in selector.split(",") if part)
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind
            and ns == namespace
            and wanted.items() <= obj["metadata"].get("labels", {}).items()
        ]

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if self.fail_apply == manifest["kind"]:
            raise KubeError(500, f"apply {manifest['kind']} failed")
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        obj = copy.deepcopy(manifest)
        obj["metadata"]["uid"] = f"uid-{meta['name']}"
        self.objects[key] = obj
        self.writes.append(f"apply {key[0]}/{key[2]}")
        return copy.deepcopy(obj)

    def create(self, manifest: dict[str, Any]) -> bool:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(manifest)
        self.writes.append(f"create {key[0]}/{key[2]}")
        return True

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.writes.append(f"delete {kind}/{name}")

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        body = self.objects[(kind, namespace, name)]
        merged = {**body.get("status", {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.writes.append(f"status {name}")


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.posted.append((type_, reason, message))


@pytest.fixture
def world() -> tuple[FakeKube, Reconciler, Events]:
    kube = FakeKube()
    events = Events()
    return kube, Reconciler(kube, OperatorSettings(), events), events  # type: ignore[arg-type]


def _pipeline(kube: FakeKube) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    body["metadata"].update(namespace="demo", uid="pipeline-uid", generation=1)
    kube.objects[("Pipeline", "demo", "rag")] = body
    return body


def _current(kube: FakeKube) -> dict[str, Any]:
    return copy.deepcopy(kube.objects[("Pipeline", "demo", "rag")])


def _set_ready(kube: FakeKube) -> None:
    for (kind, _, _), obj in kube.objects.items():
        if kind == "Deployment":
            obj["spec"]["replicas"] = 1
            obj["metadata"]["generation"] = 1
            obj["status"] = {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}


def test_first_reconcile_creates_every_child_and_status(world: Any) -> None:
    kube, reconciler, events = world
    outcome = reconciler.reconcile(_pipeline(kube))
    kinds = sorted(key[0] for key in kube.objects)
    # 3 stages + router, and the namespace's collector (rag traces)
    assert kinds.count("Deployment") == 5
    assert kinds.count("Service") == 5
    assert kinds.count("HorizontalPodAutoscaler") == 4
    assert ("Secret", "demo", "rag-cache") in kube.objects
    assert ("ConfigMap", "demo", "rag-topology") in kube.objects
    assert ("ConfigMap", "demo", COLLECTOR_NAME) in kube.objects
    assert len(outcome.applied) == 17
    status = _current(kube)["status"]
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "StagesNotReady")
    assert status["observedGeneration"] == 1
    assert any(reason == "Created" for _, reason, _ in events.posted)


def test_second_reconcile_writes_nothing(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    _set_ready(kube)
    reconciler.reconcile(_current(kube))  # status flips to Ready: one status write
    kube.writes.clear()
    outcome = reconciler.reconcile(_current(kube))
    assert kube.writes == []
    assert outcome.applied == []
    assert not outcome.status_written


def test_ready_flip_keeps_transition_time_until_it_flips(world: Any) -> None:
    kube, reconciler, events = world
    reconciler.reconcile(_pipeline(kube))
    valid_before = _current(kube)["status"]["conditions"][1]
    _set_ready(kube)
    reconciler.reconcile(_current(kube))
    status = _current(kube)["status"]
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][1]["lastTransitionTime"] == valid_before["lastTransitionTime"]
    assert status["stagesReady"] == "3/3"
    assert ("Normal", "Ready", "every stage is serving") in events.posted


def test_hand_edited_child_is_repaired(world: Any) -> None:
    kube, reconciler, _events = world
    reconciler.reconcile(_pipeline(kube))
    deployment = kube.objects[("Deployment", "demo", "rag-embed")]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    del kube.objects[("Service", "demo", "rag-retrieve")]
    kube.writes.clear()
    reconciler.reconcile(_current(kube))
    assert "apply Deployment/rag-embed" in kube.writes
    assert "apply Service/rag-retrieve" in kube.writes
    image = kube.objects[("Deployment", "demo", "rag-embed")]["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image.startswith("ghcr.io/penstock-dev/examples-rag-embed")


def test_removed_stage_children_are_deleted(world: Any) -> None:
    kube, reconciler, events = world
    body = _pipeline(kube)
    reconciler.reconcile(body)
    body = _current(kube)
    body["spec"]["stages"] = [s for s in body["spec"]["stages"] if s["name"] != "embed"]
    body["spec"]["stages"][-1]["dependsOn"] = ["retrieve"]
    body["metadata"]["generation"] = 2
    reconciler.reconcile(body)
    assert ("Deployment", "demo", "rag-embed") not in kube.objects
    assert ("HorizontalPodAutoscaler", "demo", "rag-embed") not in kube.objects
    assert ("Service", "demo", "rag-embed") not in kube.objects
    assert ("Deployment", "demo", "rag-generate") in kube.objects
    assert any(reason == "Deleted" for _, reason, _ in events.posted)


def test_invalid_update_keeps_children_and_reports(world: Any) -> None:
    kube, reconciler, events = world
    reconciler.reconcile(_pipeline(kube))
    before = {key: copy.deepcopy(obj) for key, obj in kube.objects.items() if key[0] != "Pipeline"}
    body = _current(kube)
    body["spec"]["stages"][0]["dependsOn"] = ["generate"]  # a cycle
    body["metadata"]["generation"] = 2
    reconciler.reconcile(body)
    after = {key: obj for key, obj in kube.objects.items() if key[0] != "Pipeline"}
    assert after == before
    status = _current(kube)["status"]
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert "spec.stages[0].dependsOn" in valid["message"]
    assert "cycle" in valid["message"]
    assert status["observedGeneration"] == 2
    warnings = [e for e in events.posted if e[0] == "Warning"]
    assert len(warnings) == 1
    reconciler.reconcile(_current(kube) | {"spec": body["spec"]})
    assert len([e for e in events.posted if e[0] == "Warning"]) == 1, "no repeated warning"


def test_invalid_new_pipeline_gets_no_children(world: Any) -> None:
    kube, reconciler, events = world
    body = _pipeline(kube)
    body["spec"]["output"] = "nope"
    reconciler.reconcile(body)
    assert [key for key in kube.objects if key[0] != "Pipeline"] == []
    assert events.posted[0][:2] == ("Warning", "InvalidSpec")


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("resources", "requests", "cpu"), "1e9999999", "too large"),
        (("resources", "requests", "memory"), "-1Gi", "negative"),
        (("port",), True, "valid integer"),
        (("name",), "input", "reserved"),
    ],
)
def test_a_hostile_spec_is_invalid_not_a_crash(
    world: Any, path: tuple[str, ...], value: Any, needle: str
) -> None:
    kube, reconciler, events = world
    body = _pipeline(kube)
    node = body["spec"]["stages"][0]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    reconciler.reconcile(body)
    assert not any(kind != "Pipeline" for kind, _, _ in kube.objects)
    valid = next(c for c in _current(kube)["status"]["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert "spec.stages[0]." in valid["message"] and needle in valid["message"]
    assert events.posted[0][:2] == ("Warning", "InvalidSpec")


def test_the_largest_requests_at_a_high_price_still_get_a_status(world: Any) -> None:
    kube, _, events = world
    prices = PriceTable.model_validate({"gpuHour": {"default": 1e6}})
    settings = OperatorSettings(render=RenderSettings(prices=prices))
    reconciler = Reconciler(kube, settings, events)  # type: ignore[arg-type]
    body = _pipeline(kube)
    for stage in body["spec"]["stages"]:
        stage["resources"] = {"requests": {"cpu": "9223372036854775807", "nvidia.com/gpu": "7Ei"}}
        stage["scaling"] = {"minReplicas": 1000, "maxReplicas": 1000}
        stage.pop("cost", None)
    reconciler.reconcile(body)
    status = _current(kube)["status"]
    costs = [status["hourlyCost"], *(stage["hourlyCost"] for stage in status["stages"])]
    assert all(len(cost) <= 32 and Decimal(cost) > 10**20 for cost in costs), costs


def test_a_pipeline_name_no_service_can_start_with_is_invalid(world: Any) -> None:
    kube, reconciler, _ = world
    body = _pipeline(kube)
    body["metadata"]["name"] = "1rag"
    kube.objects[("Pipeline", "demo", "1rag")] = kube.objects.pop(("Pipeline", "demo", "rag"))
    reconciler.reconcile(body)
    status = kube.objects[("Pipeline", "demo", "1rag")]["status"]
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["message"].startswith("metadata.name: ")
    assert not any(kind != "Pipeline" for kind, _, _ in kube.objects)


def test_secret_is_created_once_and_never_rotated(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    password = kube.objects[("Secret", "demo", "rag-cache")]["stringData"]["redis-password"]
    reconciler.reconcile(_current(kube))
    assert kube.objects[("Secret", "demo", "rag-cache")]["stringData"]["redis-password"] == password


def test_apply_error_is_raised_not_swallowed(world: Any) -> None:
    kube, reconciler, _ = world
    kube.fail_apply = "Service"
    with pytest.raises(KubeError):
        reconciler.reconcile(_pipeline(kube))


def test_stage_hourly_cost_is_exported_and_dropped_with_the_stage(world: Any) -> None:
    from prometheus_client import REGISTRY

    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    labels = {
        "namespace": "demo",
        "pipeline": "rag",
        "stage": "generate",
        "cost_center": "search-team",
    }
    assert REGISTRY.get_sample_value("penstock_stage_hourly_cost_usd", labels) == 2.5
    body = _current(kube)
    body["spec"]["stages"] = [s for s in body["spec"]["stages"] if s["name"] != "embed"]
    body["spec"]["stages"][-1]["dependsOn"] = ["retrieve"]
    reconciler.reconcile(body)
    gone = {**labels, "stage": "embed"}
    assert REGISTRY.get_sample_value("penstock_stage_hourly_cost_usd", gone) is None


class StubPrometheus:
    """Answers the tuner's three queries per stage (a boundary fake at unit level)."""

    def __init__(self, rps: dict[str, float], latency: float = 0.1, inflight: float = 1.0) -> None:
        self.rps = rps
        self.latency = latency
        self.inflight = inflight
        self.fail = False

    def query(self, promql: str, at: float | None = None) -> list[Any]:
        from penstock.controller.prometheus import PrometheusError, Sample

        if self.fail:
            raise PrometheusError("connection refused")
        if "request_duration" in promql:
            value: dict[str, float] = dict.fromkeys(self.rps, self.latency)
        elif "inflight" in promql:
            value = dict.fromkeys(self.rps, self.inflight)
        else:
            value = self.rps
        return [Sample(labels={"stage": stage}, value=v) for stage, v in value.items()]


def _tuned_world(prometheus: StubPrometheus) -> tuple[FakeKube, Reconciler, Events]:
    kube = FakeKube()
    events = Events()
    settings = OperatorSettings(prometheus_url="http://prometheus:9090", tuner_interval_seconds=0)
    return kube, Reconciler(kube, settings, events, prometheus), events  # type: ignore[arg-type]


def _condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    return next(c for c in _current(kube)["status"]["conditions"] if c["type"] == type_)


def test_without_prometheus_the_hpas_stay_static_and_a_condition_says_why(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    metrics_condition = _condition(kube, "MetricsAvailable")
    assert (metrics_condition["status"], metrics_condition["reason"]) == ("False", "NotConfigured")
    assert (
        kube.objects[("HorizontalPodAutoscaler", "demo", "rag-embed")]["spec"]["minReplicas"] == 1
    )


def test_tuner_raises_the_hpa_floor_and_reports_in_status() -> None:
    prometheus = StubPrometheus({"retrieve": 40.0, "embed": 40.0, "generate": 40.0}, latency=0.1)
    kube, reconciler, events = _tuned_world(prometheus)
    reconciler.reconcile(_pipeline(kube))
    _set_ready(kube)
    reconciler.reconcile(_current(kube))
    status = _current(kube)["status"]
    embed = next(s for s in status["stages"] if s["name"] == "embed")
    # 40 rps at 0.1 s per request is 4 busy replicas; at 70% target utilization, 6.
    assert embed["recommendedReplicas"] == 6
    assert embed["observedRps"] == 40.0
    hpa = kube.objects[("HorizontalPodAutoscaler", "demo", "rag-embed")]["spec"]
    assert hpa["minReplicas"] == 6
    assert hpa["maxReplicas"] == 8
    assert status["bottleneck"] in {"retrieve", "embed", "generate"}
    assert status["criticalPath"][-1] == "generate"
    assert _condition(kube, "MetricsAvailable")["status"] == "True"
    assert any(reason == "RecommendationChanged" for _, reason, _ in events.posted)


def test_broken_prometheus_keeps_the_last_floor() -> None:
    prometheus = StubPrometheus({"retrieve": 40.0, "embed": 40.0, "generate": 40.0})
    kube, reconciler, _ = _tuned_world(prometheus)
    reconciler.reconcile(_pipeline(kube))
    prometheus.fail = True
    reconciler.reconcile(_current(kube))
    assert (
        kube.objects[("HorizontalPodAutoscaler", "demo", "rag-embed")]["spec"]["minReplicas"] == 6
    )
    metrics_condition = _condition(kube, "MetricsAvailable")
    assert (metrics_condition["status"], metrics_condition["reason"]) == ("False", "QueryFailed")
    assert "connection refused" in metrics_condition["message"]


# ----------------------------------------------------------------------------- the collector


def _second_pipeline(kube: FakeKube, tracing: bool = True) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    body["metadata"].update(name="chat", namespace="demo", uid="chat-uid", generation=1)
    body["spec"]["costCenter"] = "chat-team"
    body["spec"]["tracing"] = {"enabled": tracing, "samplingRatio": 1}
    kube.objects[("Pipeline", "demo", "chat")] = body
    return body


def _collector(kube: FakeKube, kind: str = "Deployment") -> dict[str, Any] | None:
    return kube.objects.get((kind, "demo", COLLECTOR_NAME))


def _collector_config(kube: FakeKube) -> dict[str, Any]:
    config_map = _collector(kube, "ConfigMap")
    assert config_map is not None
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["collector.yaml"])
    return config


def _owners(obj: dict[str, Any] | None) -> list[str]:
    assert obj is not None
    return sorted(ref["name"] for ref in obj["metadata"].get("ownerReferences", []))


def test_tracing_pipelines_of_a_namespace_share_one_collector(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    reconciler.reconcile(_second_pipeline(kube))
    for kind in ("ConfigMap", "Deployment", "Service"):
        assert _owners(_collector(kube, kind)) == ["chat", "rag"]
        assert not any(
            ref.get("controller") for ref in _collector(kube, kind)["metadata"]["ownerReferences"]
        )
    processors = _collector_config(kube)["processors"]
    stamp = processors["attributes/chat"]
    assert stamp["include"]["resources"] == [{"key": "penstock.pipeline", "value": "chat"}]
    assert {"key": "penstock.cost_center", "value": "chat-team", "action": "upsert"} in stamp[
        "actions"
    ]
    assert "attributes/rag" in processors
    pod = kube.objects[("Deployment", "demo", "chat-embed")]["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    gateway_env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert gateway_env["PENSTOCK_GATEWAY_OTLP_ENDPOINT"] == (
        f"http://{COLLECTOR_NAME}.demo.svc:4318"
    )
    kube.writes.clear()
    reconciler.reconcile(_current(kube))
    assert not [w for w in kube.writes if COLLECTOR_NAME in w]


def test_disabling_tracing_leaves_the_collector_then_deletes_it_with_the_last(world: Any) -> None:
    kube, reconciler, events = world
    reconciler.reconcile(_pipeline(kube))
    reconciler.reconcile(_second_pipeline(kube))
    chat = copy.deepcopy(kube.objects[("Pipeline", "demo", "chat")])
    chat["spec"]["tracing"]["enabled"] = False
    kube.objects[("Pipeline", "demo", "chat")] = chat
    reconciler.reconcile(chat)
    assert _owners(_collector(kube)) == ["rag"]
    assert "attributes/chat" not in _collector_config(kube)["processors"]
    rag = _current(kube)
    rag["spec"]["tracing"]["enabled"] = False
    kube.objects[("Pipeline", "demo", "rag")] = rag
    reconciler.reconcile(rag)
    for kind in ("ConfigMap", "Deployment", "Service"):
        assert _collector(kube, kind) is None
    assert any(
        reason == "Deleted" and COLLECTOR_NAME in message for _, reason, message in events.posted
    )


def test_pipeline_without_tracing_gets_no_collector(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_second_pipeline(kube, tracing=False))
    assert _collector(kube) is None
    assert _collector(kube, "ConfigMap") is None


def test_an_owner_with_an_invalid_spec_keeps_its_place(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    reconciler.reconcile(_second_pipeline(kube))
    chat = copy.deepcopy(kube.objects[("Pipeline", "demo", "chat")])
    chat["spec"]["stages"][0]["dependsOn"] = ["generate"]  # a cycle
    kube.objects[("Pipeline", "demo", "chat")] = chat
    reconciler.reconcile(chat)
    reconciler.reconcile(_current(kube))  # rag recomputes the shared collector
    assert _owners(_collector(kube)) == ["chat", "rag"]
    stamp = _collector_config(kube)["processors"]["attributes/chat"]
    assert {"key": "penstock.cost_center", "value": "chat-team", "action": "upsert"} in stamp[
        "actions"
    ]


def test_a_deleted_pipeline_leaves_the_collector_config_on_refresh(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    reconciler.reconcile(_second_pipeline(kube))
    del kube.objects[("Pipeline", "demo", "chat")]
    applied, deleted = reconciler.collectors.remove("demo", "chat-uid")
    assert deleted == []
    assert f"ConfigMap/{COLLECTOR_NAME}" in applied
    assert _owners(_collector(kube, "ConfigMap")) == ["rag"]
    assert "attributes/chat" not in _collector_config(kube)["processors"]
    assert reconciler.collectors.remove("demo", "never-traced") == ([], [])
    assert reconciler.collectors.remove("elsewhere", "x") == ([], [])


def test_the_collector_costs_no_request_once_a_pipeline_is_known(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))
    calls: list[tuple[str, str]] = []
    for method in ("get", "list"):
        original = getattr(kube, method)

        def counted(kind: str, *args: Any, _original: Any = original, _m: str = method) -> Any:
            calls.append((_m, kind))
            return _original(kind, *args)

        monkeypatch.setattr(kube, method, counted)
    reconciler.reconcile(_current(kube))
    assert ("list", "Pipeline") not in calls
    assert not [call for call in calls if call[0] == "get" and call[1] != "Secret"]
    calls.clear()
    reconciler.reconcile(_second_pipeline(kube))  # a new member: no list, only the 3 objects
    assert ("list", "Pipeline") not in calls
    assert _owners(_collector(kube)) == ["chat", "rag"]


def test_a_new_pipeline_lists_nothing_and_posts_one_event_per_kind_of_change(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, reconciler, events = world
    lists: list[str] = []
    original = kube.list

    def counted(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        lists.append(kind)
        return original(kind, namespace, selector)

    monkeypatch.setattr(kube, "list", counted)
    reconciler.reconcile(_pipeline(kube))
    # no child lists: only the namespace's Pipelines, once, for the shared collector
    assert lists == ["Pipeline"]
    created = [message for _, reason, message in events.posted if reason == "Created"]
    children, secret, collector = created
    assert children.count("Deployment ") == 4 and children.count("HorizontalPodAutoscaler") == 4
    assert "ConfigMap rag-topology" in children
    assert secret == "created Secret rag-cache"
    assert collector.startswith(f"created ConfigMap, Deployment, Service {COLLECTOR_NAME}")


def test_a_failed_preload_is_in_the_status_from_one_pod_list(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_pipeline(kube))  # first reconcile: children created, status written
    failed = {
        "name": "preload",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "error: sha256 mismatch"}},
    }
    kube.objects[("Pod", "demo", "rag-embed-x")] = {
        "metadata": {
            "name": "rag-embed-x",
            "labels": {"penstock.dev/pipeline": "rag", "penstock.dev/stage": "embed"},
        },
        "status": {"initContainerStatuses": [failed]},
    }
    lists: list[str] = []
    original = kube.list

    def counted(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        lists.append(kind)
        return original(kind, namespace, selector)

    monkeypatch.setattr(kube, "list", counted)
    reconciler.reconcile(_current(kube))
    assert lists.count("Pod") == 1  # every stage rolls out; one list serves them all
    degraded = next(c for c in _current(kube)["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["message"] == (
        "embed: init container preload failed (exit 1): error: sha256 mismatch"
    )

    _set_ready(kube)
    lists.clear()
    reconciler.reconcile(_current(kube))
    assert "Pod" not in lists  # nothing rolling out: no pod is read


# ----------------------------------------------------------------------------- variants

VARIANT_SPEC: dict[str, Any] = {
    "output": "answer",
    "stages": [
        {"name": "retrieve", "image": "r:1", "cost": {"hourlyRate": "0.50"}},
        {
            "name": "answer",
            "image": "a:1",
            "dependsOn": ["retrieve"],
            "cost": {"hourlyRate": "2.00"},
            "variants": [
                {"name": "light", "cost": {"hourlyRate": "0.10"}, "scaling": {"minReplicas": 2}},
                {"name": "heavy"},  # the stage's price and scaling
            ],
        },
    ],
}


def _variant_spec() -> PipelineSpec:
    result = validate_spec(VARIANT_SPEC)
    assert result.spec is not None, result.summary()
    return result.spec


def _deployment(replicas: int, ready: int, stuck: str | None = None) -> dict[str, Any]:
    conditions = (
        [{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": stuck}]
        if stuck
        else []
    )
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "conditions": conditions,
        },
    }


def _variant_rows(stage: Any) -> list[tuple[str, int, int, str | None]]:
    return [(v.name, v.desired_replicas, v.ready_replicas, v.hourly_cost) for v in stage.variants]


def test_a_stage_with_variants_sums_their_replicas_and_cost() -> None:
    deployments = {
        "qa-router": _deployment(1, 1),
        "qa-retrieve": _deployment(1, 1),
        "qa-answer-light": _deployment(3, 3),
        "qa-answer-heavy": _deployment(1, 1),
    }
    stages, not_ready, stuck, total = stage_statuses(
        "qa", _variant_spec(), deployments, PriceTable()
    )
    retrieve, answer = stages
    assert retrieve.variants is None
    assert (retrieve.desired_replicas, retrieve.ready_replicas, retrieve.hourly_cost) == (
        1,
        1,
        "0.5000",
    )
    assert _variant_rows(answer) == [("light", 3, 3, "0.3000"), ("heavy", 1, 1, "2.0000")]
    assert (answer.desired_replicas, answer.ready_replicas, answer.hourly_cost) == (4, 4, "2.3000")
    assert (not_ready, stuck, total) == ([], [], Decimal("2.80"))
    assert _ready_replicas("qa", _variant_spec(), deployments) == {"retrieve": 1, "answer": 4}


def test_a_stage_is_ready_when_every_variant_is() -> None:
    deployments = {
        "qa-router": _deployment(1, 1),
        "qa-retrieve": _deployment(1, 1),
        # New: one replica until the HPA lifts it to light's minReplicas 2, so not rolled out.
        "qa-answer-light": _deployment(1, 1),
        "qa-answer-heavy": _deployment(2, 1, stuck="ReplicaSet has timed out progressing"),
    }
    stages, not_ready, stuck, total = stage_statuses(
        "qa", _variant_spec(), deployments, PriceTable()
    )
    answer = stages[1]
    assert _variant_rows(answer) == [("light", 2, 1, "0.2000"), ("heavy", 2, 1, "4.0000")]
    assert (answer.desired_replicas, answer.ready_replicas, answer.hourly_cost) == (4, 2, "4.2000")
    assert not_ready == ["answer"]
    assert stuck == ["answer: heavy: ReplicaSet has timed out progressing"]
    assert total == Decimal("4.70")
    del deployments["qa-answer-heavy"]  # not created yet
    stages, not_ready, _, _ = stage_statuses("qa", _variant_spec(), deployments, PriceTable())
    assert _variant_rows(stages[1])[1] == ("heavy", 0, 0, "0.0000")
    assert (stages[1].desired_replicas, stages[1].ready_replicas) == (2, 1)
    assert not_ready == ["answer"]


def _variant_pipeline(kube: FakeKube) -> dict[str, Any]:
    fixture = ROOT / "tests" / "unit" / "fixtures" / "variants.yaml"
    body: dict[str, Any] = yaml.safe_load(fixture.read_text())
    body["metadata"].update(namespace="demo", uid="qa-uid", generation=1)
    kube.objects[("Pipeline", "demo", "qa")] = body
    return body


def test_reconcile_runs_each_variant_and_reports_it_in_status(world: Any) -> None:
    kube, reconciler, _ = world
    reconciler.reconcile(_variant_pipeline(kube))
    names = {(kind, name) for kind, _, name in kube.objects}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        assert {(kind, "qa-answer-light"), (kind, "qa-answer-heavy")} <= names
        assert (kind, "qa-answer") not in names
    _set_ready(kube)
    kube.objects[("Deployment", "demo", "qa-answer-light")]["spec"]["replicas"] = 3
    kube.objects[("Deployment", "demo", "qa-answer-light")]["status"].update(
        readyReplicas=3, updatedReplicas=3
    )
    reconciler.reconcile(copy.deepcopy(kube.objects[("Pipeline", "demo", "qa")]))
    status = kube.objects[("Pipeline", "demo", "qa")]["status"]
    answer = next(stage for stage in status["stages"] if stage["name"] == "answer")
    assert [(v["name"], v["desiredReplicas"], v["readyReplicas"]) for v in answer["variants"]] == [
        ("light", 3, 3),
        ("heavy", 1, 1),
    ]
    assert (answer["desiredReplicas"], answer["readyReplicas"]) == (4, 4)
    assert status["conditions"][0]["status"] == "True"  # Ready: every variant serves


def test_a_removed_variant_loses_its_children(world: Any) -> None:
    kube, reconciler, _ = world
    body = _variant_pipeline(kube)
    reconciler.reconcile(body)
    body = copy.deepcopy(kube.objects[("Pipeline", "demo", "qa")])
    answer = body["spec"]["stages"][1]
    answer["variants"].append({"name": "tiny"})
    body["metadata"]["generation"] = 2
    reconciler.reconcile(body)
    assert ("Deployment", "demo", "qa-answer-tiny") in kube.objects
    answer["variants"] = [v for v in answer["variants"] if v["name"] != "light"]
    body["metadata"]["generation"] = 3
    reconciler.reconcile(body)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        assert (kind, "demo", "qa-answer-light") not in kube.objects
        assert (kind, "demo", "qa-answer-heavy") in kube.objects


class RecordingPrometheus(StubPrometheus):
    def __init__(self, rps: dict[str, float]) -> None:
        super().__init__(rps)
        self.queries: list[str] = []

    def query(self, promql: str, at: float | None = None) -> list[Any]:
        self.queries.append(promql)
        return super().query(promql, at)


@pytest.mark.parametrize("variants", [True, False])
def test_the_tuner_asks_for_variant_figures_only_when_a_stage_has_variants(
    variants: bool,
) -> None:
    raw = copy.deepcopy(VARIANT_SPEC)
    if not variants:
        del raw["stages"][1]["variants"]
    result = validate_spec(raw)
    assert result.spec is not None
    prometheus = RecordingPrometheus({"retrieve": 1.0, "answer": 1.0})
    tuning = ThroughputTuning(prometheus, 0, 60)  # type: ignore[arg-type]
    tuning.run("demo", "qa", result.spec, {}, [])
    asked = [q for q in prometheus.queries if "penstock_router_variant_calls_total" in q]
    assert len(asked) == (2 if variants else 0)
    assert len(prometheus.queries) == (3 + 4 + 3 if variants else 3 + 4)
