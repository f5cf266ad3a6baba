"""kopf handlers: every trigger leads to the same level-based reconcile of one Pipeline.

Pipeline create/resume/spec-update reconcile at once (an error makes kopf retry); a timer
repairs drift; events on children (a Deployment becoming ready, a Service deleted by hand)
schedule a debounced reconcile of their Pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from penstock.api import GROUP, PLURAL, VERSION
from penstock.contract.wire import MANAGED_BY
from penstock.controller import metrics
from penstock.controller.kube import KubeError
from penstock.controller.reconcile import Reconciler
from penstock.render import FIELD_MANAGER

log = logging.getLogger("penstock.handlers")

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
DEBOUNCE_SECONDS = 0.5


class PipelineLocks:
    """One reconcile at a time per Pipeline; children events collapse into one pending run."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: tuple[str, str]) -> None:
        self._locks.pop(key, None)
        task = self._pending.pop(key, None)
        if task:
            task.cancel()

    def schedule(self, key: tuple[str, str], reconciler: Reconciler) -> None:
        if key in self._pending:
            return
        task = asyncio.create_task(self._run_later(key, reconciler))
        self._pending[key] = task

    async def _run_later(self, key: tuple[str, str], reconciler: Reconciler) -> None:
        await asyncio.sleep(DEBOUNCE_SECONDS)
        self._pending.pop(key, None)
        namespace, name = key
        try:
            body = await asyncio.to_thread(reconciler.kube.get, "Pipeline", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            async with self.lock(key):
                await asyncio.to_thread(reconciler.reconcile, body)
        except KubeError as error:
            # The resync timer retries; nothing is lost.
            level = logging.DEBUG if _namespace_terminating(error) else logging.WARNING
            log.log(
                level, "reconcile of %s/%s after a child event failed: %s", namespace, name, error
            )


LOCKS = PipelineLocks()


def _namespace_terminating(error: KubeError) -> bool:
    """A write refused because the namespace is being deleted: its Pipelines go with it."""
    return error.status == 403 and "being terminated" in str(error)


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler = memo["reconciler"]
    return reconciler


async def _reconcile_now(body: kopf.Body, memo: kopf.Memo) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    async with LOCKS.lock(key):
        try:
            await asyncio.to_thread(_reconciler(memo).reconcile, dict(body))
        except KubeError as error:
            # Raise so kopf retries with backoff; never swallow an apply error.
            raise kopf.TemporaryError(str(error), delay=5) from error


async def reconcile_pipeline(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_now(body, memo)


async def forget_pipeline(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Children go by garbage collection (owner references); only local state is dropped here,
    # and the namespace's shared collector drops the Pipeline from its configuration.
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    LOCKS.forget((namespace, name))
    metrics.forget_pipeline(namespace, name)
    reconciler = _reconciler(memo)
    reconciler.tuning.forget(namespace, name)
    try:
        await asyncio.to_thread(reconciler.collectors.remove, namespace, body["metadata"]["uid"])
    except KubeError as error:
        # The next resync of another Pipeline in the namespace catches up.
        log.warning("collector of %s after deleting %s: %s", namespace, name, error)


def _others_changed_it(meta: Mapping[str, Any]) -> bool:
    """Did a field manager other than the operator write the object (not its status) since
    the operator last did? The operator's own applies need no second look."""
    ours, theirs = "", ""
    for entry in meta.get("managedFields", []):
        if entry.get("subresource"):
            continue  # status written by the controllers
        time = str(entry.get("time", ""))
        if entry.get("manager") == FIELD_MANAGER:
            ours = max(ours, time)
        else:
            theirs = max(theirs, time)
    return theirs >= ours if theirs else False


def needs_reconcile(event_type: str | None, kind: str, meta: Mapping[str, Any]) -> bool:
    """Which events on a child can change what its Pipeline should do or report.

    Not the initial listing (resume reconciles every Pipeline) and not the creation (the
    operator created it); a deletion always; a Deployment's changes always (its status makes
    the Pipeline Ready); other kinds only when someone else edited them.
    """
    if event_type == "DELETED":
        return True
    if event_type != "MODIFIED":
        return False
    return kind == "Deployment" or _others_changed_it(meta)


async def child_changed(
    body: kopf.Body, event: Mapping[str, Any], memo: kopf.Memo, **_: Any
) -> None:
    meta = body.get("metadata", {})
    pipeline = meta.get("labels", {}).get("penstock.dev/pipeline")
    owned = any(ref.get("kind") == "Pipeline" for ref in meta.get("ownerReferences", []))
    if not (pipeline and owned and meta.get("namespace")):
        return
    if needs_reconcile(event.get("type"), str(body.get("kind", "")), meta):
        LOCKS.schedule((meta["namespace"], pipeline), _reconciler(memo))


RESYNC_CONCURRENCY = 4


async def resync_loop(reconciler: Reconciler, interval: float) -> None:
    """Every interval, reconcile every watched Pipeline: repairs drift that caused no event."""
    limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def one(body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        async with limit, LOCKS.lock(key):
            try:
                await asyncio.to_thread(reconciler.reconcile, body)
            except KubeError as error:
                level = logging.DEBUG if _namespace_terminating(error) else logging.WARNING
                log.log(level, "resync of %s/%s failed: %s", *key, error)
            except Exception:
                # One bad Pipeline must not end the loop for all the others.
                log.exception("resync of %s/%s failed", *key)

    while True:
        await asyncio.sleep(interval)
        try:
            bodies = await asyncio.to_thread(reconciler.list_pipelines)
        except KubeError as error:
            log.warning("resync: cannot list Pipelines: %s", error)
            continue
        live = [b for b in bodies if not b["metadata"].get("deletionTimestamp")]
        await asyncio.gather(*(one(body) for body in live))


CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("", "v1", "configmaps"),
)


def register(registry: kopf.OperatorRegistry, resync_seconds: float) -> None:
    """Attach the handlers to a registry (the resync interval is a runtime setting)."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.resume(*resource, id="reconcile", registry=registry)(reconcile_pipeline)
    kopf.on.create(*resource, id="reconcile", registry=registry)(reconcile_pipeline)
    kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)(reconcile_pipeline)
    # Drift repair runs as one operator-wide loop rather than a kopf timer per Pipeline: kopf
    # guards timers with a finalizer, which would block deleting Pipelines while the operator
    # is down (e.g. after `helm uninstall`).

    async def start_resync(memo: kopf.Memo, **_: Any) -> None:
        memo["resync_task"] = asyncio.create_task(resync_loop(_reconciler(memo), resync_seconds))

    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        task: asyncio.Task[None] | None = memo.get("resync_task")
        if task:
            task.cancel()

    kopf.on.startup(registry=registry)(start_resync)
    kopf.on.cleanup(registry=registry)(stop_resync)
    kopf.on.delete(*resource, optional=True, registry=registry)(forget_pipeline)
    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, labels=MANAGED, registry=registry)(child_changed)
