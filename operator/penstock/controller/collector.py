"""Keeps each namespace's OpenTelemetry collector in step with its tracing Pipelines.

The collector is shared, so its desired state is a function of every Pipeline of the
namespace: any of them reconciling recomputes it from one list of Pipelines. Pipelines with
an invalid spec keep what they had (their last valid children keep sending spans).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.validation import validate_spec
from penstock.controller.drift import drifted
from penstock.controller.kube import Kube
from penstock.render import PipelineRef, RenderSettings
from penstock.render.collector import COLLECTOR_NAME, TracedPipeline, render_collector

# (event type, reason, message) on the Pipeline whose reconcile made the change
Note = Callable[[str, str, str], None]

KINDS = ("ConfigMap", "Deployment", "Service")


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {ref.get("uid", "") for ref in obj["metadata"].get("ownerReferences", [])}


def _managed(obj: Mapping[str, Any]) -> bool:
    labels = obj["metadata"].get("labels", {})
    return bool(labels.get("app.kubernetes.io/managed-by") == "penstock-operator")


def _ref(body: Mapping[str, Any]) -> PipelineRef:
    meta = body["metadata"]
    return PipelineRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _label_text(spec: Any, key: str) -> str:
    value = spec.get(key) if isinstance(spec, dict) else None
    return value if isinstance(value, str) and value else "unallocated"


class Collectors:
    def __init__(self, kube: Kube, settings: RenderSettings) -> None:
        self.kube = kube
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, namespace: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(namespace, threading.Lock())

    def sync(
        self, body: Mapping[str, Any], spec: PipelineSpec, note: Note
    ) -> tuple[list[str], list[str]]:
        """Bring the namespace's collector up to date; returns (applied, deleted) objects.

        Cheap when the Pipeline neither traces nor owns the collector: one GET.
        """
        ref = _ref(body)
        if not spec.tracing_enabled:
            live = self.kube.get("Deployment", ref.namespace, COLLECTOR_NAME)
            if live is None or str(ref.uid) not in _owner_uids(live):
                return [], []
        with self._lock(ref.namespace):
            return self._sync(ref.namespace, note)

    def refresh(self, namespace: str) -> tuple[list[str], list[str]]:
        """Recompute the namespace's collector (after a Pipeline was deleted), when it has one."""
        if self.kube.get("Deployment", namespace, COLLECTOR_NAME) is None:
            return [], []
        with self._lock(namespace):
            return self._sync(namespace, lambda *_: None)

    def _traced(self, namespace: str, owners: set[str]) -> list[TracedPipeline]:
        traced = []
        for body in self.kube.list("Pipeline", namespace, ""):
            if body["metadata"].get("deletionTimestamp"):
                continue
            spec = validate_spec(body.get("spec")).spec
            ref = _ref(body)
            if spec is not None:
                if spec.tracing_enabled:
                    traced.append(TracedPipeline.of(ref, spec))
            elif ref.uid in owners:
                raw = body.get("spec")
                traced.append(
                    TracedPipeline(ref, _label_text(raw, "costCenter"), _label_text(raw, "team"))
                )
        return traced

    def _sync(self, namespace: str, note: Note) -> tuple[list[str], list[str]]:
        live = {kind: self.kube.get(kind, namespace, COLLECTOR_NAME) for kind in KINDS}
        current_owners = set().union(*(_owner_uids(obj) for obj in live.values() if obj))
        traced = self._traced(namespace, current_owners)
        applied: list[str] = []
        deleted: list[str] = []
        if not traced:
            for kind, obj in live.items():
                if obj is not None and _managed(obj):
                    self.kube.delete(kind, namespace, COLLECTOR_NAME, obj["metadata"].get("uid"))
                    deleted.append(f"{kind}/{COLLECTOR_NAME}")
                    note(
                        "Normal", "Deleted", f"deleted {kind} {COLLECTOR_NAME}: no Pipeline traces"
                    )
            return applied, deleted
        wanted_owners = {str(p.ref.uid) for p in traced if p.ref.uid}
        for manifest in render_collector(namespace, traced, self.settings):
            kind = manifest["kind"]
            current = live[kind]
            stale_owners = current is not None and _owner_uids(current) != wanted_owners
            if drifted(manifest, current) or stale_owners:
                self.kube.apply(manifest)
                applied.append(f"{kind}/{COLLECTOR_NAME}")
                verb = "created" if current is None else "updated"
                note(
                    "Normal",
                    verb.capitalize(),
                    f"{verb} {kind} {COLLECTOR_NAME}: OpenTelemetry collector of the "
                    f"{len(traced)} tracing Pipeline(s) in {namespace}",
                )
        return applied, deleted
