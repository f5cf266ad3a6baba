"""The floor plan the gateway and the router share: a public handler on dataplane/http1 (the
hot path) and an admin app on aiohttp (``/metrics``, ``/live``, ``/ready``), on listeners of
their own; a tracer of its own provider, start/stop and the command's serve loop. Each server
is a thin subclass that adds its handler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NoOpTracer, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from penstock.dataplane.connections import GuardedSite, Listener
from penstock.dataplane.errors import error_middleware
from penstock.dataplane.flags import HostPort
from penstock.dataplane.http1 import Handler, Site
from penstock.dataplane.limits import Identity, ServerLimits
from penstock.dataplane.serving import listen, stop_on_signals

ADMIN_MAX_CONNECTIONS = 64
"""Probes and scrapes need few connections: the admin port's bound, whatever the load."""


def traces_url(endpoint: str) -> str:
    """A collector base URL gets the OTLP/HTTP traces path; a URL with a path is kept."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def build_tracer(
    name: str,
    resource: Mapping[str, str],
    otlp_endpoint: str | None,
    sampling_ratio: float,
    exporter: SpanExporter | None = None,
) -> tuple[Tracer, TracerProvider | None]:
    """A tracer of its own provider (not the global one), or a no-op one without tracing."""
    if exporter is None and otlp_endpoint is None:
        return NoOpTracer(), None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=traces_url(otlp_endpoint or ""))
    provider = TracerProvider(
        resource=Resource.create(dict(resource)),
        sampler=ParentBased(TraceIdRatioBased(sampling_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer(name), provider


class Server:
    """A public app and the admin app on their listeners; subclasses say what is ready."""

    def __init__(
        self,
        identity: Identity,
        registry: CollectorRegistry,
        tracer: tuple[Tracer, TracerProvider | None],
    ) -> None:
        self.identity = identity
        self.registry = registry
        self._tracer, self._provider = tracer
        self._tracing = self._provider is not None
        self._propagator: TextMapPropagator = TraceContextTextMapPropagator()
        self.ready = False
        self.port = 0
        self.admin_port = 0
        self._runners: list[web.AppRunner] = []
        self._sites: list[Site] = []

    async def start(self) -> None:
        """Set up what the server needs and :meth:`open` its listeners."""
        raise NotImplementedError

    async def stop(self) -> None:
        """:meth:`close` the listeners and release what start set up."""
        raise NotImplementedError

    def readiness(self) -> dict[str, Any]:
        """The fields of the /ready answer after its status."""
        return {}

    async def open(
        self,
        handler: Handler,
        public: HostPort,
        private: HostPort,
        limits: ServerLimits,
        *,
        max_body_bytes: int = 0,
    ) -> None:
        """Serve ``handler`` on ``public`` (dataplane/http1: the hot path, request bodies up
        to ``max_body_bytes``) and the admin app on ``private`` (aiohttp: probes, scrapes)."""
        admin = web.Application(
            middlewares=[
                error_middleware(
                    f"{self.identity.describe} (admin)",
                    "GET /metrics, /live, /ready",
                    self.identity.fields,
                )
            ]
        )
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_get("/live", self._live)
        admin.router.add_get("/ready", self._ready)
        site = Site(handler, limits, self.identity, max_body_bytes)
        self._sites.append(site)
        self.port = await site.start(public.host, public.port)
        admin_limits = replace(
            limits, max_connections=min(limits.max_connections, ADMIN_MAX_CONNECTIONS)
        )
        self.admin_port = await listen(
            admin, private.host, private.port, self._runners, admin_limits, self.identity
        )

    async def close(self) -> None:
        """Stop listening (in-flight requests finish within the runners' shutdown timeout)."""
        self.ready = False
        for site in self._sites:
            await site.stop()
        self._sites = []
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []

    def listeners(self) -> list[Listener]:
        """The listeners' connection bookkeeping: the public port's, then the admin port's."""
        found = [site.listener for site in self._sites]
        for runner in self._runners:
            found += [site.listener for site in runner.sites if isinstance(site, GuardedSite)]
        return found

    def close_tracer(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def _ready(self, request: web.Request) -> web.Response:
        status = "ready" if self.ready else "not ready"
        body = {"status": status, **self.readiness()}
        return web.json_response(body, status=200 if self.ready else 503)


async def serve_until_stopped(
    server: Server, stop: asyncio.Event | None, started: Callable[[], str], log: logging.Logger
) -> None:
    """Start ``server``, log ``started()``, run until ``stop`` is set (or SIGTERM/SIGINT), then
    stop it."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        try:
            await server.start()
            log.info("%s", started())
            await stop.wait()
            log.info("stopping")
        finally:
            await server.stop()
