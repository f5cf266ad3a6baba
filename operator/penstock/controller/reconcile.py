"""The level-based reconcile of one Pipeline: desired children in, minimal writes out.

Idempotent: reading the children and finding nothing to change writes nothing, so an idle
resync costs reads only.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from penstock.api.status import PipelineStatus
from penstock.api.validation import validate_object, validate_spec
from penstock.contract.wire import MANAGED_BY
from penstock.controller import metrics
from penstock.controller.collector import Collectors
from penstock.controller.conditions import find, is_true, now_rfc3339
from penstock.controller.kube import CHILD_KINDS, Kube
from penstock.controller.plan import child_key, owned_by, plan_children, plan_secret
from penstock.controller.prometheus import PrometheusClient
from penstock.controller.settings import OperatorSettings
from penstock.controller.status import invalid_status, observed_status, rolled_out, valid_status
from penstock.controller.tracing import reconcile_span
from penstock.controller.tuning import ThroughputTuning
from penstock.render import PipelineRef, render_children, render_secret
from penstock.render.cache import cache_secret_name
from penstock.render.meta import stage_object_name

log = logging.getLogger("penstock.reconcile")

# (pipeline body, event type "Normal"/"Warning", reason, message)
EmitEvent = Callable[[Mapping[str, Any], str, str, str], None]


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False


def status_patch(previous: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that also removes keys the new status no longer has."""
    patch: dict[str, Any] = dict(current)
    for key in previous:
        if key not in current:
            patch[key] = None
    return patch


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        emit: EmitEvent,
        prometheus: PrometheusClient | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.emit = emit
        self.collectors = Collectors(kube, settings.render, settings.resync_seconds)
        self.tuning = ThroughputTuning(
            prometheus, settings.tuner_interval_seconds, settings.tuner_window_seconds
        )

    def list_pipelines(self) -> list[dict[str, Any]]:
        """Every Pipeline the operator watches (all namespaces, or its namespaces)."""
        if not self.settings.namespaces:
            return self.kube.list_all("Pipeline")
        return [
            body
            for namespace in self.settings.namespaces
            for body in self.kube.list("Pipeline", namespace, "")
        ]

    def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        started = time.monotonic()
        meta = body["metadata"]
        with reconcile_span(
            meta["namespace"], meta["name"], int(meta.get("generation", 0))
        ) as span:
            try:
                outcome = self._reconcile(body)
            except Exception as error:
                metrics.RECONCILE_TOTAL.labels(result="error").inc()
                span.record_exception(error)
                span.set_attribute("penstock.reconcile.result", "error")
                raise
            finally:
                metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
            result = "changed" if outcome.applied or outcome.deleted else "unchanged"
            span.set_attribute("penstock.reconcile.result", result)
            span.set_attribute("penstock.reconcile.applied", len(outcome.applied))
            span.set_attribute("penstock.reconcile.deleted", len(outcome.deleted))
        metrics.RECONCILE_TOTAL.labels(result=result).inc()
        return outcome

    def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        ref = PipelineRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        generation = int(meta.get("generation", 0))
        written: dict[str, Any] = dict(body.get("status") or {})
        previous = observed_status(body)
        outcome = Outcome()
        result = validate_object(body)
        if result.spec is None:
            # Never touch the children of the last valid spec: what runs keeps running.
            status = invalid_status(generation, result, previous, now_rfc3339())
            was = find(previous.conditions, "Valid")
            if not was or was.status != "False" or was.message != result.summary():
                self.emit(body, "Warning", "InvalidSpec", result.summary()[:1024])
            outcome.status_written = self._write_status(ref, written, status)
            return outcome

        spec = result.spec
        selector = f"penstock.dev/pipeline={ref.name},app.kubernetes.io/managed-by={MANAGED_BY}"
        live: dict[tuple[str, str], dict[str, Any]] = {}
        # A Pipeline never reconciled to the end has no status yet: its children are created
        # with server-side apply, which is also right for any that a killed reconcile left.
        if previous.observed_generation is not None:
            for kind in CHILD_KINDS:
                for item in self.kube.list(kind, ref.namespace, selector):
                    if owned_by(item, meta["uid"]):
                        live[(kind, item["metadata"]["name"])] = item

        live_deployments = {name: obj for (kind, name), obj in live.items() if kind == "Deployment"}
        tuning = self.tuning.run(ref.namespace, ref.name, spec, live_deployments, previous.stages)
        for stage in tuning.result.stages if tuning.result else ():
            if stage.changed:
                self.emit(
                    body,
                    "Normal",
                    "RecommendationChanged",
                    f"stage {stage.name}: {stage.recommended_replicas} replicas recommended "
                    f"({stage.reason})",
                )
        desired = render_children(ref, spec, self.settings.render, tuning.floors)
        plan = plan_children(desired, live)
        changes: dict[str, list[str]] = {"Created": [], "Updated": [], "Deleted": []}
        try:
            for manifest in plan.apply:
                kind, name = key = child_key(manifest)
                live[key] = self.kube.apply(manifest)
                outcome.applied.append(f"{kind}/{name}")
                changes["Created" if key in plan.new else "Updated"].append(f"{kind} {name}")
            for gone in plan.delete:
                self.kube.delete(gone.kind, ref.namespace, gone.name, gone.uid)
                del live[(gone.kind, gone.name)]
                outcome.deleted.append(f"{gone.kind}/{gone.name}")
                changes["Deleted"].append(f"{gone.kind} {gone.name}")
        finally:
            # One Event per kind of change and reconcile, also when an apply failed midway.
            for reason, objects in changes.items():
                if objects:
                    why = ": not in the spec" if reason == "Deleted" else ""
                    message = f"{reason.lower()} {', '.join(objects)}{why}"
                    self.emit(body, "Normal", reason, message[:1024])

        self._reconcile_secret(body, ref, spec.cache_used, outcome)
        collector_applied, collector_deleted = self.collectors.sync(
            body, spec, lambda kind, reason, message: self.emit(body, kind, reason, message)
        )
        outcome.applied += collector_applied
        outcome.deleted += collector_deleted

        deployments = {name: obj for (kind, name), obj in live.items() if kind == "Deployment"}
        # Pods are read only while a stage is rolling out, to say why they do not start (one
        # list for the Pipeline), and not in its first reconcile: its Deployments are new.
        pods: dict[str, list[dict[str, Any]]] = {}
        rolling = [
            workload.stage.name
            for workload in spec.workloads()
            if (deployment := deployments.get(stage_object_name(ref.name, workload.component)))
            and not rolled_out(deployment)
        ]
        if rolling and previous.observed_generation is not None:
            for pod in self.kube.list("Pod", ref.namespace, f"penstock.dev/pipeline={ref.name}"):
                stage_label = pod["metadata"].get("labels", {}).get("penstock.dev/stage")
                if stage_label in rolling:
                    pods.setdefault(stage_label, []).append(pod)
        status = valid_status(
            ref,
            generation,
            result,
            deployments,
            self.settings.render.prices,
            pods,
            tuning,
            previous,
            now_rfc3339(),
        )
        metrics.export_status(ref.namespace, ref.name, spec.cost_center, status)
        if is_true(status.conditions, "Ready") and not is_true(previous.conditions, "Ready"):
            self.emit(body, "Normal", "Ready", "every stage is serving")
        outcome.status_written = self._write_status(ref, written, status)
        return outcome

    def _reconcile_secret(
        self, body: Mapping[str, Any], ref: PipelineRef, used: bool, outcome: Outcome
    ) -> None:
        name = cache_secret_name(ref.name)
        existing = self.kube.get("Secret", ref.namespace, name)
        action = plan_secret(used, existing, str(ref.uid))
        if action == "create":
            spec = validate_spec(body.get("spec")).spec
            assert spec is not None
            manifest = render_secret(ref, spec, secrets.token_urlsafe(24))
            assert manifest is not None
            if self.kube.create(manifest):
                outcome.applied.append(f"Secret/{name}")
                self.emit(body, "Normal", "Created", f"created Secret {name}")
        elif action == "delete" and existing is not None:
            self.kube.delete("Secret", ref.namespace, name, existing["metadata"].get("uid"))
            outcome.deleted.append(f"Secret/{name}")
            self.emit(body, "Normal", "Deleted", f"deleted Secret {name}: no stage caches")

    def _write_status(
        self, ref: PipelineRef, written: dict[str, Any], status: PipelineStatus
    ) -> bool:
        """Patch the status when it differs from what is written; True when it did."""
        document = status.to_wire()
        if document == written:
            return False
        self.kube.patch_status("Pipeline", ref.namespace, ref.name, status_patch(written, document))
        return True
