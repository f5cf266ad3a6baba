"""``penstock gateway`` settings: command-line flags, each also read from an environment variable.

A flag ``--foo-bar`` is also read from ``PENSTOCK_GATEWAY_FOO_BAR``; a flag on the command line
wins over its variable and an empty variable counts as unset. The Redis password may also come
from ``REDIS_PASSWORD`` (so it can live in a Secret rather than in the URL).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from penstock.contract import wire
from penstock.contract.wire import ADMIN_PORT, GATEWAY_ENV_PREFIX
from penstock.dataplane.flags import (
    ConfigError,
    FlagParser,
    HostPort,
    http_url,
    parse_host_port,
    pick,
)
from penstock.dataplane.gateway.packing import PackSettings
from penstock.dataplane.limits import LIMIT_FLAGS, ServerLimits, parse_limit
from penstock.semantic.policy import DEFAULT_ONE_SLOT_THRESHOLD, DEFAULT_THRESHOLD

ENV_PREFIX = GATEWAY_ENV_PREFIX
ENV_REDIS_PASSWORD = "REDIS_PASSWORD"
ENV_SHARED_REDIS_PASSWORD = "SHARED_REDIS_PASSWORD"
ENV_SHARED_CACHE_KEY = "SHARED_CACHE_KEY"


@dataclass(frozen=True)
class GatewayConfig:
    listen: HostPort
    upstream: str
    admin_listen: HostPort
    redis_url: str | None = None
    redis_password: str | None = None
    cache_ttl_seconds: int = 3600
    cache_max_entry_bytes: int = 1 << 20
    cache_generation: int = 0
    memory_cache_max_entries: int = 0
    memory_cache_max_bytes: int = 64 << 20
    shared_redis_url: str | None = None
    shared_redis_cluster: bool = False
    disk_cache_dir: str | None = None
    disk_cache_max_bytes: int = 1 << 30
    disk_cache_max_entry_bytes: int = 16 << 20
    shared_redis_password: str | None = None
    shared_cache_key: str | None = None
    cache_key_headers: tuple[str, ...] = ("accept", "authorization")
    semantic_embedder_url: str | None = None
    semantic_threshold: float = DEFAULT_THRESHOLD
    semantic_one_slot_threshold: float = DEFAULT_ONE_SLOT_THRESHOLD
    semantic_text_field: str = "text"
    semantic_ignore_fields: tuple[str, ...] = ()
    semantic_max_entries: int = 10_000
    semantic_verify_fraction: float = 0.05
    semantic_timeout_ms: float = 1000.0
    batch_max_size: int = 8
    batch_max_latency_ms: float = 5.0
    batch_path: str | None = None
    input_mode: str = "envelope"
    pack_template: str | None = None
    pack_item_template: str = PackSettings.item_template
    pack_prompt_field: str = PackSettings.prompt_field
    pack_answer_field: str = PackSettings.answer_field
    pack_max_prompt_bytes: int = PackSettings.max_prompt_bytes
    batch_max_inflight: int = 2
    batch_max_queue: int | None = None
    warmup_requests: int = 0
    warmup_body: bytes = b"{}"
    warmup_path: str = "/"
    pipeline: str = ""
    stage: str = "stage"
    variant: str | None = None
    namespace: str = ""
    cost_center: str = ""
    hourly_cost: float = 0.0
    otlp_endpoint: str | None = None
    sampling_ratio: float = 1.0
    timeout_seconds: float = 30.0
    max_body_bytes: int = 16 << 20
    stage_image: str = ""
    model_version: str = ""
    redis_timeout_ms: float = 50.0
    health_interval_seconds: float = 2.0
    header_timeout_seconds: float = ServerLimits.header_timeout
    body_timeout_seconds: float = ServerLimits.body_timeout
    idle_timeout_seconds: float = ServerLimits.idle_timeout
    max_connections: int = ServerLimits.max_connections

    @property
    def batching(self) -> bool:
        return self.batch_path is not None or self.pack_template is not None

    @property
    def pack(self) -> PackSettings | None:
        """Prompt packing (batching.pack): batches become one packed call of POST /."""
        if self.pack_template is None:
            return None
        return PackSettings(
            self.pack_prompt_field,
            self.pack_answer_field,
            self.pack_template,
            self.pack_item_template,
            self.pack_max_prompt_bytes,
        )

    @property
    def stream_input(self) -> bool:
        """input: stream: POST / goes to the stage as it arrives, never read whole."""
        return self.input_mode == "stream"

    @property
    def limits(self) -> ServerLimits:
        """The listeners' bounds (see dataplane/connections)."""
        # A streamed input arrives while its producer generates: it may take the stage's time.
        body_timeout = self.body_timeout_seconds
        if self.stream_input:
            body_timeout = max(body_timeout, self.timeout_seconds)
        return ServerLimits(
            self.header_timeout_seconds,
            body_timeout,
            self.idle_timeout_seconds,
            self.max_connections,
        )

    @property
    def batch_queue_limit(self) -> int:
        """Most requests waiting for a batch: --batch-max-queue, else four rounds of full
        batches (at least 64)."""
        if self.batch_max_queue is not None:
            return self.batch_max_queue
        return max(64, 4 * self.batch_max_size * self.batch_max_inflight)


def env_name(flag: str) -> str:
    """``--cache-ttl-seconds`` -> ``PENSTOCK_GATEWAY_CACHE_TTL_SECONDS``."""
    return wire.env_name(ENV_PREFIX, flag)


def _upstream_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"{text!r} is not an http://host[:port] URL (the stage container in the same pod)"
        )
    return text.strip().rstrip("/")


def _redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{text!r} is not a redis://, rediss:// or unix:// URL")
    return text.strip()


def _shared_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme == "memcached":
        if parts.path not in ("", "/") or parts.username or parts.password or not parts.hostname:
            raise ValueError(f"{text!r} is not a memcached://HOST[:PORT] URL")
        return text.strip()
    return _redis_url(text)


def _boolean(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return text.strip().lower() == "true"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _float(low: float, high: float, *, low_open: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = "(" if low_open else "["
            raise ValueError(f"{text!r} is not in {bound}{low:g}, {high:g}]")
        return value

    return parse


def _path(text: str) -> str:
    text = text.strip()
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute URL path (must start with '/')")
    return text


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def _headers(text: str) -> tuple[str, ...]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    for name in names:
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a header name")
    return tuple(sorted(set(names)))


def _pack_template(text: str) -> str:
    if "{items}" not in text:
        raise ValueError("the template must contain {items} (where the numbered prompts go)")
    return text


def _item_template(text: str) -> str:
    if "{prompt}" not in text:
        raise ValueError("the item template must contain {prompt}")
    return text


def _input_mode(text: str) -> str:
    text = text.strip()
    if text not in ("envelope", "stream"):
        raise ValueError(f"{text!r} is not envelope or stream")
    return text


def _text(text: str) -> str:
    return text.strip()


_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def _field_path(text: str) -> str:
    text = text.strip()
    if not _FIELD_PATH.match(text):
        raise ValueError(f"{text!r} is not a dotted field path such as text or input.question")
    return text


def _field_paths(text: str) -> tuple[str, ...]:
    return tuple(_field_path(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class _Flag:
    name: str
    convert: Callable[[str], Any]
    metavar: str
    help: str


_FLAGS: tuple[_Flag, ...] = (
    _Flag("--listen", parse_host_port, "HOST:PORT", "where clients reach the stage (required)"),
    _Flag(
        "--upstream",
        _upstream_url,
        "URL",
        "the stage container, e.g. http://127.0.0.1:8080 (required)",
    ),
    _Flag(
        "--admin-listen",
        parse_host_port,
        "HOST:PORT",
        "/metrics, /live, /ready (default: the --listen host, port 9090)",
    ),
    _Flag("--redis-url", _redis_url, "URL", "Redis for the exact cache; without it no caching"),
    _Flag("--cache-ttl-seconds", _positive_int, "N", "cache entry lifetime (default 3600)"),
    _Flag("--cache-max-entry-bytes", _positive_int, "N", "largest body cached (default 1048576)"),
    _Flag(
        "--cache-generation",
        _non_negative_int,
        "N",
        "part of every cache key: a higher N never reads a lower one's entries (default 0)",
    ),
    _Flag(
        "--shared-redis-url",
        _shared_url,
        "URL",
        "a Redis (or memcached://HOST[:PORT]) every replica shares, looked up after"
        f" --redis-url (entries signed with {ENV_SHARED_CACHE_KEY}; password from"
        f" {ENV_SHARED_REDIS_PASSWORD}, Redis only)",
    ),
    _Flag(
        "--shared-redis-cluster",
        _boolean,
        "true|false",
        "--shared-redis-url is one node of a Redis Cluster: keys go to their slots' nodes"
        " (default false)",
    ),
    _Flag(
        "--disk-cache-dir",
        _text,
        "PATH",
        "enables the disk tier, looked up after the others: one file per entry under PATH",
    ),
    _Flag(
        "--disk-cache-max-bytes",
        _positive_int,
        "N",
        "bytes the disk tier may hold; past them the least recently read go (default 1073741824)",
    ),
    _Flag(
        "--disk-cache-max-entry-bytes",
        _positive_int,
        "N",
        "largest body the disk tier stores (default 16777216)",
    ),
    _Flag(
        "--memory-cache-max-entries",
        _positive_int,
        "N",
        "enables the in-process cache tier, looked up before Redis, holding at most N entries",
    ),
    _Flag(
        "--memory-cache-max-bytes",
        _positive_int,
        "N",
        "bytes the in-process tier may hold, bodies and keys (default 67108864)",
    ),
    _Flag(
        "--cache-key-headers",
        _headers,
        "H1,H2",
        "request headers that change the answer, part of the cache key"
        " (default accept,authorization; empty: none)",
    ),
    _Flag(
        "--semantic-embedder-url",
        http_url,
        "URL",
        'enables the semantic tier: the stage that embeds {"text": ...} as {"embedding": [...]}',
    ),
    _Flag(
        "--semantic-threshold",
        _float(0, 1, low_open=True),
        "COS",
        f"least cosine similarity for a semantic hit (default {DEFAULT_THRESHOLD})",
    ),
    _Flag(
        "--semantic-one-slot-threshold",
        _float(0, 1, low_open=True),
        "COS",
        "least cosine when the input is a stored one with one slot changed"
        f" (default {DEFAULT_ONE_SLOT_THRESHOLD})",
    ),
    _Flag(
        "--semantic-text-field",
        _field_path,
        "PATH",
        "the body's text to compare (default text; a chat body compares its last message)",
    ),
    _Flag(
        "--semantic-ignore-fields",
        _field_paths,
        "F1,F2",
        "body fields (dotted paths) that may differ for a semantic hit; all others must not",
    ),
    _Flag(
        "--semantic-max-entries",
        _positive_int,
        "N",
        "inputs the semantic index holds (default 10000)",
    ),
    _Flag(
        "--semantic-verify-fraction",
        _float(0, 1, low_open=False),
        "SHARE",
        "share of semantic hits also asked of the stage and compared (default 0.05)",
    ),
    _Flag(
        "--semantic-timeout-ms",
        _float(0, 60_000, low_open=True),
        "MS",
        "longest wait for the embedder; then a miss (default 1000)",
    ),
    _Flag("--batch-max-size", _positive_int, "N", "most requests per batch (default 8)"),
    _Flag(
        "--batch-max-latency-ms",
        _float(0, 60_000, low_open=False),
        "MS",
        "longest wait for a batch to fill (default 5)",
    ),
    _Flag("--batch-path", _path, "PATH", "the stage's batch endpoint; enables batching"),
    _Flag(
        "--pack-template",
        _pack_template,
        "TEXT",
        "pack batches into one prompt of POST / ({count} and {items} filled in); enables"
        " batching without a batch path",
    ),
    _Flag(
        "--pack-item-template",
        _item_template,
        "TEXT",
        "one packed item ({number}, {prompt}; default '{number}. {prompt}')",
    ),
    _Flag("--pack-prompt-field", _text, "NAME", "request field of the prompt (default prompt)"),
    _Flag("--pack-answer-field", _text, "NAME", "answer field of the text (default text)"),
    _Flag(
        "--pack-max-prompt-bytes",
        _positive_int,
        "N",
        "largest packed prompt; items beyond go alone (default 16384)",
    ),
    _Flag(
        "--input-mode",
        _input_mode,
        "MODE",
        "envelope (default): POST / is read whole (cache, coalescing, batching); stream: passed"
        " to the stage as it arrives (input: stream)",
    ),
    _Flag(
        "--batch-max-inflight",
        _positive_int,
        "N",
        "most batches at the stage at once; meanwhile requests collect (default 2)",
    ),
    _Flag(
        "--batch-max-queue",
        _positive_int,
        "N",
        "most requests waiting for a batch; more get 503 with Retry-After"
        " (default 4 x max size x max inflight, at least 64)",
    ),
    _Flag("--warmup-requests", _non_negative_int, "N", "warmup POSTs before ready (default 0)"),
    _Flag("--warmup-body", _text, "FILE", "file with the warmup request body (default '{}')"),
    _Flag("--warmup-path", _path, "PATH", "where warmup requests go (default /)"),
    _Flag("--pipeline", _text, "NAME", "pipeline name (metric label, span attribute)"),
    _Flag("--stage", _text, "NAME", "stage name (metric label, span attribute, error messages)"),
    _Flag(
        "--variant",
        _text,
        "NAME",
        "the stage variant it fronts (metric label, span attribute, cache key)",
    ),
    _Flag("--namespace", _text, "NS", "namespace (metric label)"),
    _Flag("--cost-center", _text, "NAME", "cost center (cost metric label, span attribute)"),
    _Flag(
        "--hourly-cost",
        _float(0, 1e9, low_open=False),
        "USD",
        "hourly cost of one stage replica (default 0)",
    ),
    _Flag("--otlp-endpoint", http_url, "URL", "OTLP/HTTP collector; enables tracing"),
    _Flag(
        "--sampling-ratio", _float(0, 1, low_open=False), "R", "trace sampling ratio (default 1)"
    ),
    _Flag(
        "--timeout-seconds",
        _float(0, 86_400, low_open=True),
        "N",
        "per-request stage timeout (default 30)",
    ),
    _Flag(
        "--max-body-bytes",
        _positive_int,
        "N",
        "largest request body taken on the stage endpoint (default 16777216)",
    ),
    _Flag("--stage-image", _text, "IMAGE", "stage image (part of the cache key)"),
    _Flag("--model-version", _text, "VERSION", "model version (part of the cache key)"),
    *(
        _Flag(name, partial(parse_limit, name), "N", text)
        for name, (_, text) in LIMIT_FLAGS.items()
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="penstock gateway",
        description="Stage gateway sidecar: reverse proxy with exact cache (Redis), in-flight"
        " coalescing, dynamic batching, Prometheus metrics, OTLP traces and warmup-gated"
        " readiness.",
        epilog=f"Every flag --foo-bar can also be set with {ENV_PREFIX}FOO_BAR; the Redis"
        f" password also with {ENV_REDIS_PASSWORD}. Exit status 2 on bad flags.",
    )
    for flag in _FLAGS:
        parser.add_argument(
            flag.name,
            metavar=flag.metavar,
            default=None,
            help=f"{flag.help} [env: {env_name(flag.name)}]",
        )
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Flags, else environment variables, else defaults; raise :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for flag in _FLAGS:
        dest = flag.name.lstrip("-").replace("-", "_")
        # An empty --cache-key-headers means "no headers", not "unset".
        raw, source = pick(args, env, ENV_PREFIX, flag.name, flag.name == "--cache-key-headers")
        if raw is None:
            continue
        try:
            values[dest] = flag.convert(raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    for required in ("listen", "upstream"):
        if required not in values:
            name = "--" + required
            raise ConfigError(f"{name} is required (or set {env_name(name)})")
    listen: HostPort = values["listen"]
    values.setdefault("admin_listen", HostPort(listen.host, ADMIN_PORT))
    if values["admin_listen"] == listen and listen.port != 0:
        raise ConfigError("--admin-listen must differ from --listen")
    body_file = values.pop("warmup_body", None)
    if body_file is not None:
        try:
            values["warmup_body"] = Path(body_file).read_bytes()
        except OSError as error:
            raise ConfigError(f"--warmup-body: cannot read {body_file}: {error}") from None
    batch_only = ("batch_max_size", "batch_max_latency_ms", "batch_max_inflight", "batch_max_queue")
    batches = "batch_path" in values or "pack_template" in values
    if not batches and any(name in values for name in batch_only):
        raise ConfigError(
            "--batch-max-size/--batch-max-latency-ms/--batch-max-inflight/--batch-max-queue"
            " need --batch-path or --pack-template"
        )
    if "batch_path" in values and "pack_template" in values:
        raise ConfigError("--batch-path and --pack-template do not go together")
    pack_only = [name for name in values if name.startswith("pack_") and name != "pack_template"]
    if pack_only and "pack_template" not in values:
        raise ConfigError(
            "--pack-item-template/--pack-*-field/--pack-max-prompt-bytes need --pack-template"
        )
    streamed_input = values.get("input_mode") == "stream"
    if streamed_input and any(
        name in values for name in ("batch_path", "pack_template", "redis_url")
    ):
        raise ConfigError(
            "--input-mode stream goes with none of --batch-path, --pack-template, --redis-url"
        )
    disk_only = ("disk_cache_max_bytes", "disk_cache_max_entry_bytes")
    if any(name in values for name in disk_only) and "disk_cache_dir" not in values:
        raise ConfigError(
            "--disk-cache-max-bytes/--disk-cache-max-entry-bytes need --disk-cache-dir"
        )
    if streamed_input and "disk_cache_dir" in values:
        raise ConfigError("--input-mode stream does not go with --disk-cache-dir")
    if "memory_cache_max_bytes" in values and "memory_cache_max_entries" not in values:
        raise ConfigError("--memory-cache-max-bytes needs --memory-cache-max-entries")
    password = env.get(ENV_REDIS_PASSWORD, "")
    if password:
        values["redis_password"] = password
    if values.get("shared_redis_cluster"):
        url = values.get("shared_redis_url") or ""
        if urlsplit(url).scheme not in ("redis", "rediss"):
            raise ConfigError(
                "--shared-redis-cluster needs a redis:// or rediss:// --shared-redis-url"
            )
        if urlsplit(url).path not in ("", "/", "/0"):
            raise ConfigError("--shared-redis-cluster: a Redis Cluster has database 0 only")
    if "shared_redis_url" in values:
        values["shared_redis_password"] = env.get(ENV_SHARED_REDIS_PASSWORD, "") or None
        values["shared_cache_key"] = env.get(ENV_SHARED_CACHE_KEY, "") or None
        if values["shared_cache_key"] is None:
            raise ConfigError(
                f"--shared-redis-url needs {ENV_SHARED_CACHE_KEY}: the key its entries are signed"
                " with, so that other Pipelines sharing that Redis can neither read nor plant them"
            )
    semantic = [name for name in values if name.startswith("semantic_")]
    if semantic and "semantic_embedder_url" not in values:
        raise ConfigError("--semantic-* flags need --semantic-embedder-url")
    if semantic and "redis_url" not in values:
        raise ConfigError(
            "--semantic-embedder-url needs --redis-url: semantic hits are answers"
            " the cache tiers hold"
        )
    low = values.get("semantic_threshold", DEFAULT_THRESHOLD)
    if values.get("semantic_one_slot_threshold", DEFAULT_ONE_SLOT_THRESHOLD) < low:
        raise ConfigError("--semantic-one-slot-threshold must be at least --semantic-threshold")
    if "stage" in values and not values["stage"]:
        raise ConfigError("--stage must not be empty")
    return GatewayConfig(**values)
