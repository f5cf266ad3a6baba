"""kopf handlers: every trigger feeds one work queue (controller/queue.py) of Pipeline keys,
whose workers run the same level-based reconcile.

Pipeline create/resume/spec-update queue the key at once; the informer's events on children (a
Deployment becoming ready, a Service deleted by hand) queue it after a short debounce; the
resync loop queues every Pipeline (drift repair and the tuner) from the informer's store. A
failed reconcile comes back with backoff. A standby operator (controller/leadership.py) queues
but does not work; turning active, it queues every Pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from penstock.api import GROUP, PLURAL, VERSION
from penstock.controller import metrics
from penstock.controller.informer import Informer
from penstock.controller.kube import CHILD_KINDS, KubeError
from penstock.controller.leadership import Leadership
from penstock.controller.queue import Body, Key, Work, WorkQueue
from penstock.controller.reconcile import Reconciler
from penstock.render import FIELD_MANAGER

log = logging.getLogger("penstock.handlers")

DEBOUNCE_SECONDS = 0.5
QUEUE_WORKERS = 4


def _namespace_terminating(error: KubeError) -> bool:
    """A write refused because the namespace is being deleted: its Pipelines go with it."""
    return error.status == 403 and "being terminated" in str(error)


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler = memo["reconciler"]
    return reconciler


def _queue(memo: kopf.Memo) -> WorkQueue:
    queue: WorkQueue = memo["queue"]
    return queue


def _key(body: Mapping[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def reconcile_work(reconciler: Reconciler) -> Work:
    """The queue's work: reconcile the Pipeline from the body it was queued with (a resync's
    list, a kopf event), or read it when it came without one (child events, reruns)."""

    async def work(key: Key, known: Body | None) -> None:
        namespace, name = key
        try:
            body = known
            if body is None:
                body = await asyncio.to_thread(reconciler.kube.get, "Pipeline", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            await asyncio.to_thread(reconciler.reconcile, dict(body))
        except KubeError as error:
            if _namespace_terminating(error):  # its Pipelines go with it: nothing to retry
                log.debug("reconcile of %s/%s: %s", namespace, name, error)
                return
            raise

    return work


async def reconcile_pipeline(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _queue(memo).add(_key(body), dict(body))


async def forget_pipeline(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Children go by garbage collection (owner references); only local state is dropped here,
    # and the namespace's shared collector drops the Pipeline from its configuration.
    namespace, name = _key(body)
    _queue(memo).forget((namespace, name))
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


def child_owner(obj: Mapping[str, Any]) -> Key | None:
    """(namespace, Pipeline) of a child the operator manages for a Pipeline."""
    meta = obj.get("metadata", {})
    pipeline = meta.get("labels", {}).get("penstock.dev/pipeline")
    owned = any(ref.get("kind") == "Pipeline" for ref in meta.get("ownerReferences", []))
    if not (pipeline and owned and meta.get("namespace")):
        return None
    return meta["namespace"], pipeline


def informer_events(
    loop: asyncio.AbstractEventLoop, queue: WorkQueue, leadership: Leadership
) -> Callable[[str, str, Mapping[str, Any]], None]:
    """What the informer's threads call on a change: decide there, queue on the loop."""

    def on_change(kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            if kind in ("ClusterKopfPeering", "KopfPeering"):
                loop.call_soon_threadsafe(leadership.check)
            elif (
                kind in CHILD_KINDS
                and (key := child_owner(obj))
                and needs_reconcile(event_type, kind, obj.get("metadata", {}))
            ):
                loop.call_soon_threadsafe(queue.add, key, None, DEBOUNCE_SECONDS)
        except RuntimeError:  # the loop is closed: the operator is stopping
            pass

    return on_change


async def resync_loop(
    reconciler: Reconciler,
    queue: WorkQueue,
    interval: float,
    active: asyncio.Event,
    wake: asyncio.Event,
) -> None:
    """Every interval (or when woken: turned active), queue every watched Pipeline: repairs
    drift that caused no event. A standby skips it."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
        wake.clear()
        if not active.is_set():
            continue
        try:
            bodies = await asyncio.to_thread(reconciler.list_pipelines)
        except KubeError as error:
            log.warning("resync: cannot list Pipelines: %s", error)
            continue
        for body in bodies:
            if not body["metadata"].get("deletionTimestamp"):
                queue.add(_key(body), body)


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
        reconciler = _reconciler(memo)
        leadership: Leadership = memo["leadership"]
        queue = WorkQueue(
            reconcile_work(reconciler),
            workers=QUEUE_WORKERS,
            quiet=(KubeError,),
            gate=leadership.active,
        )
        queue.start()
        memo["queue"] = queue
        wake = asyncio.Event()
        leadership.on_active = wake.set
        informer: Informer | None = memo.get("informer")
        if informer is not None:
            informer.start(informer_events(asyncio.get_running_loop(), queue, leadership))
        memo["resync_tasks"] = [
            asyncio.create_task(
                resync_loop(reconciler, queue, resync_seconds, leadership.active, wake)
            ),
            asyncio.create_task(leadership.run()),
        ]

    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        for task in memo.get("resync_tasks", []):
            task.cancel()
        queue: WorkQueue | None = memo.get("queue")
        if queue is not None:
            await queue.stop()
        informer: Informer | None = memo.get("informer")
        if informer is not None:
            await asyncio.to_thread(informer.stop)

    kopf.on.startup(registry=registry)(start_resync)
    kopf.on.cleanup(registry=registry)(stop_resync)
    kopf.on.delete(*resource, optional=True, registry=registry)(forget_pipeline)
