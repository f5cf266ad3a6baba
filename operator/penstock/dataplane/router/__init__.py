"""The router: the pipeline's entrypoint (``penstock router``), the same floor plan as the
gateway: ``config`` (flags and environment), ``server`` (the Router on the shared skeleton of
dataplane/serving), ``telemetry`` (metrics), ``command`` (serve and main); plus ``topology``
(loading the topology or a Pipeline file) and ``stream`` (relaying a streamed answer)."""

from penstock.dataplane.flags import ConfigError
from penstock.dataplane.router.command import main, serve
from penstock.dataplane.router.config import RouterConfig, env_name, parse_config
from penstock.dataplane.router.server import Router
from penstock.dataplane.router.telemetry import RouterMetrics

__all__ = [
    "ConfigError",
    "Router",
    "RouterConfig",
    "RouterMetrics",
    "env_name",
    "main",
    "parse_config",
    "serve",
]
