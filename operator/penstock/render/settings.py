"""Inputs of rendering that come from the operator's configuration, not from the Pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from penstock.api.cost import PriceTable

DEFAULT_OPERATOR_IMAGE = "ghcr.io/penstock-dev/penstock:0.1.0"
DEFAULT_REDIS_IMAGE = "docker.io/library/redis:7.4.1-alpine"
# The collector release whose configuration schema the tests check (Jaeger 2.13 embeds 0.140).
DEFAULT_COLLECTOR_IMAGE = "docker.io/otel/opentelemetry-collector-contrib:0.140.1"


@dataclass(frozen=True)
class RenderSettings:
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    """Image of the preload init container and the gateway sidecar (the operator's own image)."""
    redis_image: str = DEFAULT_REDIS_IMAGE
    """Image of the Redis cache sidecar."""
    prices: PriceTable = field(default_factory=PriceTable)
    """Price table: the gateway's per-request cost uses the same hourly figure as status."""
    collector_image: str = DEFAULT_COLLECTOR_IMAGE
    """Image of the per-namespace OpenTelemetry collector of Pipelines with tracing enabled."""
    otlp_endpoint: str | None = None
    """The trace backend (OTLP/HTTP base URL) the per-namespace collectors export to."""
    measure_every_stage: bool = False
    """Give every stage the gateway sidecar: its metrics are what the throughput tuner reads, so
    with the tuner on (the operator has a Prometheus URL) a stage without one is never tuned."""
