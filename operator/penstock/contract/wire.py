"""Wire names: ports, headers, labels and environment prefixes shared across processes."""

from __future__ import annotations

GATEWAY_PORT = 9091
"""The gateway sidecar's serving port in a stage pod (the Service targets it)."""
ADMIN_PORT = 9090
"""/metrics, /live and /ready of the gateway and of the router."""
REDIS_PORT = 6379
"""The Redis cache sidecar, on loopback in the stage pod."""
ROUTER_PORT = 8080
"""The router container's serving port."""
RESERVED_STAGE_PORTS = (REDIS_PORT, ADMIN_PORT, GATEWAY_PORT)
"""Ports a stage container may not use: its sidecars listen there."""

PROFILE_HEADER = "X-Penstock-Profile"
"""Request header: ``1`` asks the router for a per-stage profile of the request."""
CACHE_HEADER = "X-Penstock-Cache"
"""Response header: ``hit``, ``miss``, ``coalesced`` or ``bypass`` from a stage's gateway."""

MANAGED_BY = "penstock-operator"
"""``app.kubernetes.io/managed-by`` of every object the operator creates; also its SSA field
manager."""

GATEWAY_ENV_PREFIX = "PENSTOCK_GATEWAY_"
ROUTER_ENV_PREFIX = "PENSTOCK_ROUTER_"


def env_name(prefix: str, flag: str) -> str:
    """The environment variable of a command-line flag: ``--cache-ttl-seconds`` ->
    ``PENSTOCK_GATEWAY_CACHE_TTL_SECONDS`` (for the gateway's prefix)."""
    return prefix + flag.lstrip("-").replace("-", "_").upper()
