"""`penstock operator`: configure kopf and run it."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

from penstock.contract.wire import MANAGED_BY
from penstock.controller import handlers, run_handlers
from penstock.controller.events import EventPoster
from penstock.controller.informer import CachedKube, Informer, Source, Store, sources
from penstock.controller.kube import CHILD_KINDS, load_api_client
from penstock.controller.leadership import Leadership, own_identity
from penstock.controller.prometheus import PrometheusClient
from penstock.controller.reconcile import Reconciler
from penstock.controller.runs import RunReconciler
from penstock.controller.settings import OperatorSettings, settings_from_args
from penstock.controller.tracing import configure_tracing

log = logging.getLogger("penstock.operator")
# Reconciles run in threads (asyncio.to_thread) and mostly wait on the apiserver.
RECONCILE_THREADS = 16
M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas() -> None:
    """Two malloc arenas, as MALLOC_ARENA_MAX=2 would: glibc otherwise gives busy threads arenas
    of their own, and the reconcile threads' short-lived API responses fragment them (RSS grows
    with the arenas, not with live data)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    libc.mallopt(M_ARENA_MAX, 2)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: OperatorSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "kubernetes", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _configure_kopf(config: OperatorSettings) -> Any:
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Server-side watch timeouts so a silently dead connection is replaced, not waited on.
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 60
        # Progress and diff-base in annotations under our prefix, never in status.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="penstock.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="penstock.dev", key="last-handled-configuration"
        )
        settings.persistence.finalizer = "penstock.dev/finalizer"
        # Only warnings become Events automatically; an idle resync must post nothing.
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = 16
        # More reconcile threads than the default (CPUs + 4), one pooled connection each.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(RECONCILE_THREADS, thread_name_prefix="reconcile")
        )
        settings.peering.priority = config.priority
        settings.peering.name = config.peering or "penstock"
        settings.peering.mandatory = config.peering is not None
        settings.peering.lifetime = config.peering_lifetime_seconds

    return startup


def peering_kind(settings: OperatorSettings) -> str:
    """kopf keeps one ClusterKopfPeering cluster-wide, else a KopfPeering per namespace."""
    return "KopfPeering" if settings.namespaces else "ClusterKopfPeering"


def informer_sources(settings: OperatorSettings) -> list[Source]:
    """What the informer watches: the children the operator manages, the Pipelines, and with
    peering the peering objects. Not Secrets: listing them would read every Secret."""
    managed = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    kinds = [*CHILD_KINDS, "Pipeline"]
    if settings.peering:
        kinds.append(peering_kind(settings))
    return sources(kinds, settings.namespaces, dict.fromkeys(CHILD_KINDS, managed))


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else the current kubeconfig (as the kube client)."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)


def run_operator(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    limit_malloc_arenas()
    identity = own_identity() if settings.peering else ""  # before kopf reads $POD_ID
    store = Store()
    watched = informer_sources(settings)
    try:
        kube = CachedKube(
            load_api_client(RECONCILE_THREADS), store, settings.request_timeout_seconds
        )
        # One pooled connection per watch, apart from the reconciles'.
        informer = Informer(load_api_client(len(watched) + 1), store, watched)
    except Exception as error:
        print(f"error: cannot load Kubernetes credentials: {error}", file=sys.stderr)
        return 1
    leadership = Leadership(
        store if settings.peering else None,
        peering_kind(settings),
        settings.peering or "",
        identity,
        settings.priority,
    )
    if settings.otlp_endpoint:
        configure_tracing(settings.otlp_endpoint)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    registry = kopf.OperatorRegistry()
    # With a tuner, Pipelines are revisited at least as often as it runs.
    interval = settings.resync_seconds
    if settings.prometheus_url:
        interval = min(interval, settings.tuner_interval_seconds)
    handlers.register(registry, interval)
    run_handlers.register(registry, settings.resync_seconds)
    kopf.on.startup(registry=registry)(_configure_kopf(settings))
    kopf.on.login(registry=registry)(login)
    prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
    events = EventPoster(kube)
    memo = kopf.Memo(
        reconciler=Reconciler(kube, settings, events, prometheus),
        run_reconciler=RunReconciler(kube, settings, events),
        informer=informer,
        leadership=leadership,
    )
    log.info(
        "penstock operator starting: namespaces=%s resync=%ss",
        ",".join(settings.namespaces) or "(all)",
        settings.resync_seconds,
    )
    try:
        kopf.run(
            registry=registry,
            memo=memo,
            standalone=settings.peering is None,
            priority=settings.priority,
            peering_name=settings.peering,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=(
                f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
            ),
        )
    except KeyboardInterrupt:
        pass
    except asyncio.CancelledError:
        return 1
    return 0
