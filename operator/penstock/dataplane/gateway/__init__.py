"""The gateway: a stage's sidecar (``penstock gateway``), the same floor plan as the router:
``config`` (flags and environment), ``server`` (the Gateway on the shared skeleton of
dataplane/serving), ``telemetry`` (metrics and request cost), ``command`` (serve and main);
plus what the proxy path does: ``cache`` (Redis), ``sharing`` (what may be shared, RFC 9111),
``coalesce`` (identical in-flight requests), ``batching`` and ``answers`` (a batch's items)."""

from penstock.dataplane.gateway.command import main, serve
from penstock.dataplane.gateway.config import GatewayConfig, parse_config
from penstock.dataplane.gateway.server import Gateway

__all__ = ["Gateway", "GatewayConfig", "main", "parse_config", "serve"]
