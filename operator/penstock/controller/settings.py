"""Operator settings: command-line flags, each also settable by an environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from penstock.api.cost import PriceTable
from penstock.render.settings import DEFAULT_OPERATOR_IMAGE, DEFAULT_REDIS_IMAGE, RenderSettings


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all."""
    render: RenderSettings = field(default_factory=RenderSettings)
    resync_seconds: float = 60.0
    """How often every Pipeline's children are checked for drift."""
    metrics_port: int = 8080
    health_port: int = 8081
    log_level: str = "INFO"
    log_format: str = "text"
    peering: str | None = None
    priority: int = 0
    request_timeout_seconds: float = 30.0
    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint for the operator's own reconcile spans."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PENSTOCK_{name}", default)


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        default=[ns for ns in _env("NAMESPACES", "").split(",") if ns],
        help="watch only this namespace (repeatable; env PENSTOCK_NAMESPACES, comma-separated); "
        "default: all namespaces",
    )
    parser.add_argument(
        "--operator-image",
        default=_env("OPERATOR_IMAGE", DEFAULT_OPERATOR_IMAGE),
        help="image for the preload init container (env PENSTOCK_OPERATOR_IMAGE)",
    )
    parser.add_argument(
        "--redis-image",
        default=_env("REDIS_IMAGE", DEFAULT_REDIS_IMAGE),
        help="image of the Redis cache sidecar (env PENSTOCK_REDIS_IMAGE)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("RESYNC_SECONDS", "60")),
        help="drift-repair interval per Pipeline (env PENSTOCK_RESYNC_SECONDS; default 60)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "8080")),
        help="port of /metrics, 0 to disable (env PENSTOCK_METRICS_PORT; default 8080)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(_env("HEALTH_PORT", "8081")),
        help="port of the /healthz liveness endpoint, 0 to disable (env PENSTOCK_HEALTH_PORT; default 8081)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (env PENSTOCK_LOG_LEVEL; default INFO)",
    )
    parser.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="log format (env PENSTOCK_LOG_FORMAT; default text)",
    )
    parser.add_argument(
        "--peering",
        default=_env("PEERING", "") or None,
        help="kopf peering name for an active/standby pair (env PENSTOCK_PEERING); "
        "default: standalone",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=int(_env("PRIORITY", "0")),
        help="peering priority; the highest runs, the others stand by (env PENSTOCK_PRIORITY)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        type=_url,
        default=_env("OTLP_ENDPOINT", ""),
        help="OTLP/HTTP endpoint (e.g. http://otel-collector:4318) receiving the operator's "
        "reconcile spans and the gateways' spans of Pipelines with tracing enabled "
        "(env PENSTOCK_OTLP_ENDPOINT); default: no tracing",
    )
    parser.add_argument(
        "--price-table",
        default=_env("PRICE_TABLE", ""),
        help="JSON or YAML file with prices (cpuCoreHour, memoryGiBHour, gpuHour{type: usd}); "
        "env PENSTOCK_PRICE_TABLE; default: the built-in table",
    )


def _url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    prices = PriceTable.from_file(args.price_table) if args.price_table else PriceTable()
    return OperatorSettings(
        namespaces=tuple(dict.fromkeys(args.namespace)),
        render=RenderSettings(
            operator_image=args.operator_image,
            redis_image=args.redis_image,
            prices=prices,
            otlp_endpoint=args.otlp_endpoint or None,
        ),
        resync_seconds=args.resync_seconds,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        log_level=args.log_level,
        log_format=args.log_format,
        peering=args.peering,
        priority=args.priority,
        otlp_endpoint=args.otlp_endpoint or None,
    )
