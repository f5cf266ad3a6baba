"""What a stage's gateway is told, built once from the Pipeline: the operator passes it as
environment variables (``to_env``), ``penstock dev`` as command-line flags (``to_argv``), and
``penstock gateway`` reads either back into one ``GatewayConfig`` (dataplane/gateway/config.py).

Where the two places differ is only *where* things are (addresses, the warmup body's file, the
Redis URL and namespace): those are the builder's arguments. Everything the Pipeline decides
(names, cost, cache, batching, timeouts, model version, warmup) comes from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from penstock.api import PipelineSpec, Stage
from penstock.api.cost import PriceTable, replica_hourly_cost
from penstock.api.types import parse_quantity
from penstock.contract.wire import GATEWAY_ENV_PREFIX, env_name


@dataclass(frozen=True)
class Placement:
    """Where one gateway runs and what it talks to: the part that differs by environment."""

    listen: str
    """HOST:PORT clients reach the stage at."""
    admin_listen: str
    """HOST:PORT of /metrics, /live and /ready."""
    upstream: str
    """The stage container, http://HOST:PORT."""
    namespace: str
    redis_url: str | None = None
    """The cache tier, when the stage caches and one runs."""
    warmup_body_file: str | None = None
    """Where the warmup body (``Warmup.body_document()``) is, when the stage warms up."""
    otlp_endpoint: str | None = None
    """The OTLP/HTTP collector, when the Pipeline traces and one runs."""
    shared_cache: bool = False
    """The stage's shared tier is reachable (in a cluster; ``penstock dev`` runs one replica)."""
    embedder_url: str | None = None
    """Where the semantic tier's embedder stage answers, when the stage has one."""
    managed_redis_url: str | None = None
    """The Redis the operator runs for the Pipeline (``cache.shared.managed``)."""
    disk_cache_dir: str | None = None
    """Where the disk tier's volume is mounted, when the stage has one."""


@dataclass(frozen=True)
class GatewayArgs:
    """The gateway's flags with their values, in a stable order."""

    flags: tuple[tuple[str, str], ...]

    def to_env(self) -> list[dict[str, str]]:
        """Container ``env`` entries: ``--foo-bar`` -> ``PENSTOCK_GATEWAY_FOO_BAR``."""
        return [
            {"name": env_name(GATEWAY_ENV_PREFIX, flag), "value": value}
            for flag, value in self.flags
        ]

    def to_argv(self) -> list[str]:
        """``penstock gateway`` arguments."""
        return [part for flag, value in self.flags for part in (flag, value)]


def gateway_args(
    pipeline: str,
    spec: PipelineSpec,
    stage: Stage,
    prices: PriceTable,
    where: Placement,
    variant: str | None = None,
) -> GatewayArgs:
    """stage: as the workload runs it (a variant's: Stage.as_variant), variant: its name."""
    flags: list[tuple[str, str]] = [
        ("--listen", where.listen),
        ("--admin-listen", where.admin_listen),
        ("--upstream", where.upstream),
        ("--pipeline", pipeline),
        ("--stage", stage.name),
        *([("--variant", variant)] if variant else []),
        ("--namespace", where.namespace),
        ("--cost-center", spec.cost_center),
        # One replica's USD per hour, as the status prices it.
        ("--hourly-cost", format(replica_hourly_cost(stage, prices).normalize(), "f")),
        ("--timeout-seconds", str(stage.timeout_seconds)),
        ("--stage-image", stage.image),
    ]
    if stage.model:
        flags.append(("--model-version", stage.model.sha256 or stage.model.uri))
        warmup = stage.model.warmup
        if warmup and warmup.requests and where.warmup_body_file:
            flags += [
                ("--warmup-requests", str(warmup.requests)),
                ("--warmup-path", warmup.path),
                ("--warmup-body", where.warmup_body_file),
            ]
    if stage.cache and stage.cache.enabled and where.redis_url:
        flags += [
            ("--redis-url", where.redis_url),
            ("--cache-ttl-seconds", str(stage.cache.ttl_seconds)),
            ("--cache-max-entry-bytes", str(int(parse_quantity(stage.cache.max_entry_size)))),
        ]
        if stage.cache.generation:
            flags.append(("--cache-generation", str(stage.cache.generation)))
        if stage.cache.key_headers is not None:  # unset: the gateway's default
            flags.append(("--cache-key-headers", ",".join(stage.cache.key_headers)))
        shared = stage.cache.shared
        shared_url = (shared.url or where.managed_redis_url) if shared else None
        if shared_url and where.shared_cache:
            flags.append(("--shared-redis-url", shared_url))
            if shared and shared.cluster:
                flags.append(("--shared-redis-cluster", "true"))
        semantic = stage.cache.semantic
        if semantic and where.embedder_url:
            flags += [
                ("--semantic-embedder-url", where.embedder_url),
                ("--semantic-threshold", str(semantic.threshold)),
                ("--semantic-one-slot-threshold", str(semantic.one_slot_threshold)),
                ("--semantic-text-field", semantic.text_field),
                ("--semantic-max-entries", str(semantic.max_entries)),
                ("--semantic-verify-fraction", str(semantic.verify_fraction)),
            ]
            if semantic.ignore_fields:
                flags.append(("--semantic-ignore-fields", ",".join(semantic.ignore_fields)))
        disk = stage.cache.disk
        if disk and where.disk_cache_dir:
            flags += [
                ("--disk-cache-dir", where.disk_cache_dir),
                ("--disk-cache-max-bytes", str(int(parse_quantity(disk.size)) * 9 // 10)),
                ("--disk-cache-max-entry-bytes", str(int(parse_quantity(disk.max_entry_size)))),
            ]
        if stage.cache.memory:
            flags += [
                ("--memory-cache-max-entries", str(stage.cache.memory.max_entries)),
                ("--memory-cache-max-bytes", str(int(parse_quantity(stage.cache.memory.max_size)))),
            ]
    if stage.input == "stream":
        flags.append(("--input-mode", "stream"))
    if stage.batching:
        flags += [
            ("--batch-max-size", str(stage.batching.max_batch_size)),
            ("--batch-max-latency-ms", str(stage.batching.max_latency_ms)),
        ]
        pack = stage.batching.pack
        if pack is None:
            flags.append(("--batch-path", stage.batching.path))
        else:
            flags += [
                ("--pack-template", pack.template),
                ("--pack-item-template", pack.item_template),
                ("--pack-prompt-field", pack.prompt_field),
                ("--pack-answer-field", pack.answer_field),
                ("--pack-max-prompt-bytes", str(pack.max_prompt_bytes)),
            ]
    if spec.tracing_enabled and spec.tracing and where.otlp_endpoint:
        flags += [
            ("--otlp-endpoint", where.otlp_endpoint),
            ("--sampling-ratio", str(spec.tracing.sampling_ratio)),
        ]
    return GatewayArgs(tuple(flags))
