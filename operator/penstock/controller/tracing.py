"""The operator traces its own reconciles (OpenTelemetry, OTLP over HTTP) when configured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import penstock

_tracer = trace.get_tracer("penstock.operator")


def configure_tracing(endpoint: str) -> TracerProvider:
    """Export spans to an OTLP/HTTP endpoint, e.g. http://collector:4318 (/v1/traces is added)."""
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "penstock-operator", "service.version": penstock.__version__}
        )
    )
    # Batching exporter: spans leave on a background thread, never on the event loop.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5)))
    trace.set_tracer_provider(provider)
    return provider


@contextmanager
def reconcile_span(namespace: str, name: str, generation: int) -> Iterator[Any]:
    """A span per reconcile; a no-op when tracing is not configured."""
    with _tracer.start_as_current_span(
        "penstock.reconcile",
        attributes={
            "penstock.pipeline": name,
            "k8s.namespace.name": namespace,
            "penstock.generation": generation,
        },
    ) as span:
        yield span
