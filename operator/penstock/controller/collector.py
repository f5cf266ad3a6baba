"""Keeps each namespace's OpenTelemetry collector in step with its tracing Pipelines.

The collector is shared, so its desired state is a function of every Pipeline of the
namespace, recomputed from one list of its Pipelines when one of them changes what it
contributes. Pipelines with an invalid spec keep what they had (their last valid children
keep sending spans).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.validation import validate_spec
from penstock.contract.wire import MANAGED_BY
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
    return bool(labels.get("app.kubernetes.io/managed-by") == MANAGED_BY)


def _ref(body: Mapping[str, Any]) -> PipelineRef:
    meta = body["metadata"]
    return PipelineRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def _label_text(spec: Any, key: str) -> str:
    value = spec.get(key) if isinstance(spec, dict) else None
    return value if isinstance(value, str) and value else "unallocated"


class Collectors:
    """The namespaces' collectors, with what each Pipeline contributed at the last sync.

    A reconcile whose Pipeline contributes what it did at the last sync costs no request; a
    changed or new contribution reads the collector's three objects and applies what differs.
    A namespace seen for the first time, and each one at least every ``recheck_seconds`` (to
    repair hand edits and drop what was missed), is recomputed from one list of its Pipelines.
    """

    def __init__(self, kube: Kube, settings: RenderSettings, recheck_seconds: float) -> None:
        self.kube = kube
        self.settings = settings
        self.recheck_seconds = recheck_seconds
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # namespace -> Pipeline uid -> its entry in the collector (None: not traced)
        self._members: dict[str, dict[str, TracedPipeline | None]] = {}
        self._synced_at: dict[str, float] = {}

    def _lock(self, namespace: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(namespace, threading.Lock())

    def sync(
        self, body: Mapping[str, Any], spec: PipelineSpec, note: Note
    ) -> tuple[list[str], list[str]]:
        """Bring the namespace's collector up to date; returns (applied, deleted) objects."""
        ref = _ref(body)
        uid = str(ref.uid)
        entry = TracedPipeline.of(ref, spec) if spec.tracing_enabled else None
        with self._lock(ref.namespace):
            members = self._members.get(ref.namespace)
            age = time.monotonic() - self._synced_at.get(ref.namespace, -1e9)
            if members is None or age >= self.recheck_seconds:
                return self._sync(ref.namespace, note)
            if uid in members and members[uid] == entry:
                return [], []
            updated = {**members, uid: entry}
            result = self._write(ref.namespace, updated, self._live(ref.namespace), note)
            self._members[ref.namespace] = updated
            return result

    def remove(self, namespace: str, uid: str) -> tuple[list[str], list[str]]:
        """Take a deleted Pipeline out of its namespace's collector.

        No request when it did not trace; an unknown namespace is recomputed (one list).
        """
        with self._lock(namespace):
            members = self._members.get(namespace)
            if members is None:
                return self._sync(namespace, lambda *_: None)
            if members.pop(uid, None) is None:
                return [], []
            return self._write(namespace, members, self._live(namespace), lambda *_: None)

    def _members_of(self, namespace: str, owners: set[str]) -> dict[str, TracedPipeline | None]:
        members: dict[str, TracedPipeline | None] = {}
        for body in self.kube.list("Pipeline", namespace, ""):
            if body["metadata"].get("deletionTimestamp"):
                continue
            ref = _ref(body)
            spec = validate_spec(body.get("spec")).spec
            entry: TracedPipeline | None = None
            if spec is not None:
                entry = TracedPipeline.of(ref, spec) if spec.tracing_enabled else None
            elif ref.uid in owners:
                # An invalid spec keeps its place: its last valid children still send spans.
                raw = body.get("spec")
                entry = TracedPipeline(
                    ref, _label_text(raw, "costCenter"), _label_text(raw, "team")
                )
            members[str(ref.uid)] = entry
        return members

    def _live(self, namespace: str) -> dict[str, dict[str, Any] | None]:
        return {kind: self.kube.get(kind, namespace, COLLECTOR_NAME) for kind in KINDS}

    def _sync(self, namespace: str, note: Note) -> tuple[list[str], list[str]]:
        live = self._live(namespace)
        current_owners = set().union(*(_owner_uids(obj) for obj in live.values() if obj))
        members = self._members_of(namespace, current_owners)
        result = self._write(namespace, members, live, note)
        # Remembered only after every write succeeded: a failure recomputes next time.
        self._members[namespace] = members
        self._synced_at[namespace] = time.monotonic()
        return result

    def _write(
        self,
        namespace: str,
        members: Mapping[str, TracedPipeline | None],
        live: Mapping[str, dict[str, Any] | None],
        note: Note,
    ) -> tuple[list[str], list[str]]:
        traced = [entry for entry in members.values() if entry is not None]
        applied: list[str] = []
        deleted: list[str] = []
        if not traced:
            for kind, obj in live.items():
                if obj is not None and _managed(obj):
                    self.kube.delete(kind, namespace, COLLECTOR_NAME, obj["metadata"].get("uid"))
                    deleted.append(kind)
            if deleted:
                message = f"deleted {', '.join(deleted)} {COLLECTOR_NAME}: no Pipeline traces"
                note("Normal", "Deleted", message)
            return [], [f"{kind}/{COLLECTOR_NAME}" for kind in deleted]
        wanted_owners = {str(p.ref.uid) for p in traced if p.ref.uid}
        changes: dict[str, list[str]] = {"Created": [], "Updated": []}
        for manifest in render_collector(namespace, traced, self.settings):
            kind = manifest["kind"]
            current = live[kind]
            stale_owners = current is not None and _owner_uids(current) != wanted_owners
            if drifted(manifest, current) or stale_owners:
                self.kube.apply(manifest)
                applied.append(f"{kind}/{COLLECTOR_NAME}")
                changes["Created" if current is None else "Updated"].append(kind)
        for reason, kinds in changes.items():
            if kinds:
                note(
                    "Normal",
                    reason,
                    f"{reason.lower()} {', '.join(kinds)} {COLLECTOR_NAME}: OpenTelemetry "
                    f"collector of the {len(traced)} tracing Pipeline(s) in {namespace}",
                )
        return applied, deleted
