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
"""Response header: ``hit``, ``miss`` or ``bypass`` from a stage's gateway."""
CACHE_TIER_HEADER = "X-Penstock-Cache-Tier"
"""Response header on a cache hit: the tier that answered, ``memory``, ``pod``, ``shared``,
``disk`` or ``semantic``."""
CACHE_ITEMS_HEADER = "X-Penstock-Cache-Items"
"""Response header on a batch sent to a stage's batch path: ``<hits>/<items>``, the items
answered from the cache (a repeat within the batch counts as a hit of the first)."""
CACHE_SIMILARITY_HEADER = "X-Penstock-Cache-Similarity"
"""Response header on a semantic hit: the cosine similarity to the stored input, 3 decimals."""
USAGE_HEADER = "X-Penstock-Usage"
"""A stage's token usage for one answer: ``input_tokens=12, output_tokens=40`` (the GenAI
names ``gen_ai.usage.input_tokens=...`` are accepted too). A JSON answer may carry a top-level
``usage`` object instead (``input_tokens``/``output_tokens``, or ``prompt_tokens``/
``completion_tokens`` as OpenAI-style servers write it)."""

CONFIDENCE_HEADER = "X-Penstock-Confidence"
"""Response header of a stage variant: how sure it is of this answer, a number from 0 to 1. A
cascade (variantPolicy cascade) calls the next variant when it is below minConfidence; a
variant that sends none (or no number in [0, 1]) is taken to be confident."""
VARIANT_HEADER = "X-Penstock-Variant"
"""Response header of the router: ``<stage>=<variant>`` for each stage with variants, the
variant whose answer was used (comma-separated)."""

MANAGED_BY = "penstock-operator"
"""``app.kubernetes.io/managed-by`` of every object the operator creates; also its SSA field
manager."""

GATEWAY_ENV_PREFIX = "PENSTOCK_GATEWAY_"
ROUTER_ENV_PREFIX = "PENSTOCK_ROUTER_"


def env_name(prefix: str, flag: str) -> str:
    """The environment variable of a command-line flag: ``--cache-ttl-seconds`` ->
    ``PENSTOCK_GATEWAY_CACHE_TTL_SECONDS`` (for the gateway's prefix)."""
    return prefix + flag.lstrip("-").replace("-", "_").upper()


# Metrics the gateways export and other processes read (the tuner's queries, analyze, the HPA).
STAGE_REQUESTS = "penstock_stage_requests_total"
STAGE_REQUEST_DURATION = "penstock_stage_request_duration_seconds"
STAGE_INFLIGHT = "penstock_stage_inflight_requests"
STAGE_BATCH_SIZE = "penstock_stage_batch_size"
VARIANT_CALLS = "penstock_router_variant_calls_total"
"""The router's calls of stage variants, by outcome: served (its answer was used),
low_confidence (escalated: below minConfidence), failed."""
VARIANT_CALL_DURATION = "penstock_router_variant_call_duration_seconds"
STAGE_REQUESTS_PER_SECOND = "penstock_stage_requests_per_second"
"""The Pods metric a custom-metrics adapter derives from STAGE_REQUESTS for the HPA."""
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Histogram buckets (seconds) of the gateway's and the router's request durations."""

# Span attributes of the gateway's and the router's spans.
ATTR_PIPELINE = "penstock.pipeline"
ATTR_STAGE = "penstock.stage"
ATTR_VARIANT = "penstock.variant"
ATTR_VARIANT_ATTEMPTS = "penstock.variant.attempts"
"""The router's stage span: how many variants were called (a cascade's escalations + 1)."""
ATTR_COST_CENTER = "penstock.cost_center"
ATTR_CACHE_HIT = "penstock.cache.hit"
ATTR_BATCH_SIZE = "penstock.batch.size"
ATTR_COST_USD = "penstock.cost.usd"
# What the request saved (penstock.dataplane.gateway.savings): replica-seconds, USD, and why.
ATTR_SAVED_SECONDS = "penstock.saved.seconds"
ATTR_SAVED_USD = "penstock.saved.usd"
ATTR_SAVED_REASON = "penstock.saved.reason"
# Token usage a stage reported, by the OpenTelemetry GenAI semantic conventions' names.
ATTR_INPUT_TOKENS = "gen_ai.usage.input_tokens"
ATTR_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
