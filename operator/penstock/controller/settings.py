"""Operator settings: command-line flags, each also settable by an environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from penstock.api.cost import PriceTable
from penstock.render.settings import (
    DEFAULT_COLLECTOR_IMAGE,
    DEFAULT_OPERATOR_IMAGE,
    DEFAULT_REDIS_IMAGE,
    RenderSettings,
)


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
    peering_lifetime_seconds: int = 10
    """How long a peer's keep-alive counts: a killed active operator's standby takes over
    within this (kopf renews it 5-10 s sooner, at least every second)."""
    request_timeout_seconds: float = 30.0
    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint for the operator's own reconcile spans."""
    prometheus_url: str | None = None
    """Prometheus HTTP API the throughput tuner reads; None disables the tuner."""
    tuner_interval_seconds: float = 30.0
    tuner_window_seconds: float = 300.0


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PENSTOCK_{name}", default)


def _url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value


# flag, type, default, help. Each flag is also PENSTOCK_<FLAG>; argparse applies `type` to the
# environment's string too, so a bad variable fails with a message naming the flag.
_FLAGS: list[tuple[str, Any, str, str]] = [
    ("operator-image", str, DEFAULT_OPERATOR_IMAGE, "image of the preload and gateway containers"),
    ("redis-image", str, DEFAULT_REDIS_IMAGE, "image of the Redis cache sidecar"),
    (
        "collector-image",
        str,
        DEFAULT_COLLECTOR_IMAGE,
        "image of the per-namespace OpenTelemetry collector of Pipelines with tracing enabled",
    ),
    ("resync-seconds", float, "60", "drift-repair interval per Pipeline"),
    ("metrics-port", int, "8080", "port of /metrics, 0 to disable"),
    ("health-port", int, "8081", "port of the /healthz liveness endpoint, 0 to disable"),
    ("log-level", str, "INFO", "log level: DEBUG, INFO, WARNING or ERROR"),
    ("log-format", str, "text", "log format: text or json"),
    ("peering", str, "", "kopf peering name for an active/standby pair; empty: standalone"),
    ("priority", int, "0", "peering priority; the highest runs, the others stand by"),
    (
        "peering-lifetime",
        int,
        "10",
        "seconds a peer's keep-alive counts: a standby takes over this long after the active "
        "operator was last heard of",
    ),
    (
        "otlp-endpoint",
        _url,
        "",
        "trace backend's OTLP/HTTP endpoint (e.g. http://jaeger.observability:4318) receiving "
        "the operator's reconcile spans and, through the per-namespace collectors, the spans of "
        "Pipelines with tracing enabled; empty: no operator spans, collectors keep span metrics",
    ),
    (
        "prometheus-url",
        _url,
        "",
        "Prometheus HTTP API (e.g. http://prometheus-operated.monitoring:9090) with the "
        "gateways' metrics, read by the throughput tuner; empty: no tuner, static HPAs",
    ),
    ("tuner-interval-seconds", float, "30", "how often the throughput tuner runs per Pipeline"),
    (
        "tuner-window-seconds",
        float,
        "300",
        "how long a lower recommendation must hold before the tuner scales down",
    ),
    (
        "price-table",
        str,
        "",
        "JSON or YAML file with prices (cpuCoreHour, memoryGiBHour, gpuHour{type: usd}); "
        "empty: the built-in table",
    ),
]
_CHOICES = {"log-level": ["DEBUG", "INFO", "WARNING", "ERROR"], "log-format": ["text", "json"]}


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        default=[ns for ns in _env("NAMESPACES", "").split(",") if ns],
        help="watch only this namespace (repeatable; env PENSTOCK_NAMESPACES, comma-separated); "
        "default: all namespaces",
    )
    for flag, kind, default, text in _FLAGS:
        env = flag.upper().replace("-", "_")
        parser.add_argument(
            f"--{flag}",
            type=kind,
            default=_env(env, default),
            choices=_CHOICES.get(flag),
            help=f"{text} (env PENSTOCK_{env}; default {default or 'empty'})",
        )


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    prices = PriceTable.from_file(args.price_table) if args.price_table else PriceTable()
    return OperatorSettings(
        namespaces=tuple(dict.fromkeys(args.namespace)),
        render=RenderSettings(
            operator_image=args.operator_image,
            redis_image=args.redis_image,
            collector_image=args.collector_image,
            prices=prices,
            otlp_endpoint=args.otlp_endpoint or None,
            measure_every_stage=bool(args.prometheus_url),
        ),
        resync_seconds=args.resync_seconds,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        log_level=args.log_level,
        log_format=args.log_format,
        peering=args.peering or None,
        priority=args.priority,
        peering_lifetime_seconds=args.peering_lifetime,
        otlp_endpoint=args.otlp_endpoint or None,
        prometheus_url=args.prometheus_url or None,
        tuner_interval_seconds=args.tuner_interval_seconds,
        tuner_window_seconds=args.tuner_window_seconds,
    )
