"""kopf handlers of PipelineRuns: create/resume/spec-update, their Jobs' events and a resync
feed one work queue of run keys, whose workers run RunReconciler.reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from penstock.api import GROUP, VERSION
from penstock.api.run import RUN_PLURAL
from penstock.contract.wire import MANAGED_BY
from penstock.controller.kube import KubeError
from penstock.controller.leadership import Leadership
from penstock.controller.queue import Body, Key, Work, WorkQueue
from penstock.controller.runs import RunReconciler

log = logging.getLogger("penstock.runs")
WORKERS = 2
DEBOUNCE_SECONDS = 0.5


def _queue(memo: kopf.Memo) -> WorkQueue:
    queue: WorkQueue = memo["run_queue"]
    return queue


def _key(body: Mapping[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def run_work(reconciler: RunReconciler) -> Work:
    async def work(key: Key, known: Body | None) -> None:
        namespace, name = key
        body = known
        if body is None:
            body = await asyncio.to_thread(reconciler.kube.get, "PipelineRun", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        await asyncio.to_thread(reconciler.reconcile, {"kind": "PipelineRun", **body})

    return work


async def run_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _queue(memo).add(_key(body), dict(body))


async def run_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # The Job goes by garbage collection (its owner reference), and its pods with it.
    _queue(memo).forget(_key(body))


async def job_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata", {})
    run = meta.get("labels", {}).get("penstock.dev/run")
    owned = any(ref.get("kind") == "PipelineRun" for ref in meta.get("ownerReferences", []))
    if run and owned and meta.get("namespace"):
        _queue(memo).add((meta["namespace"], run), delay=DEBOUNCE_SECONDS)


async def resync_runs(
    reconciler: RunReconciler, queue: WorkQueue, interval: float, active: asyncio.Event
) -> None:
    """Every interval, queue every unfinished run (a Pipeline that appeared, a missed event);
    a standby skips it."""
    while True:
        await asyncio.sleep(interval)
        if not active.is_set():
            continue
        try:
            bodies = await asyncio.to_thread(reconciler.list_runs)
        except KubeError as error:
            log.warning("resync: cannot list PipelineRuns: %s", error)
            continue
        for body in bodies:
            phase = (body.get("status") or {}).get("phase")
            if phase not in ("Succeeded", "Failed") and not body["metadata"].get(
                "deletionTimestamp"
            ):
                queue.add(_key(body), body)


def register(registry: kopf.OperatorRegistry, resync_seconds: float) -> None:
    resource = (GROUP, VERSION, RUN_PLURAL)
    for on in (kopf.on.resume, kopf.on.create):
        on(*resource, id="reconcile-run", registry=registry)(run_changed)
    kopf.on.update(*resource, id="reconcile-run", field="spec", registry=registry)(run_changed)
    kopf.on.delete(*resource, optional=True, registry=registry)(run_deleted)
    kopf.on.event(
        "batch",
        "v1",
        "jobs",
        labels={"app.kubernetes.io/managed-by": MANAGED_BY, "penstock.dev/run": kopf.PRESENT},
        registry=registry,
    )(job_changed)

    async def start(memo: kopf.Memo, **_: Any) -> None:
        reconciler: RunReconciler = memo["run_reconciler"]
        leadership: Leadership = memo["leadership"]
        # A standby's queue fills but does not work (the resync's adds are deduplicated).
        queue = WorkQueue(
            run_work(reconciler), workers=WORKERS, quiet=(KubeError,), gate=leadership.active
        )
        queue.start()
        memo["run_queue"] = queue
        memo["run_resync"] = asyncio.create_task(
            resync_runs(reconciler, queue, resync_seconds, leadership.active)
        )

    async def stop(memo: kopf.Memo, **_: Any) -> None:
        task: asyncio.Task[None] | None = memo.get("run_resync")
        if task:
            task.cancel()
        queue: WorkQueue | None = memo.get("run_queue")
        if queue is not None:
            await queue.stop()

    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)
