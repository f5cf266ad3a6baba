"""Gateway metrics (Prometheus, the DESIGN names), traces (OpenTelemetry) and request cost."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from penstock.contract.wire import (
    DURATION_BUCKETS,
    STAGE_BATCH_SIZE,
    STAGE_INFLIGHT,
    STAGE_REQUEST_DURATION,
    STAGE_REQUESTS,
)
from penstock.dataplane.gateway.config import GatewayConfig

if TYPE_CHECKING:  # savings.py prices with request_cost_usd from here
    from penstock.dataplane.gateway.savings import Saving

LABEL_NAMES = ("namespace", "pipeline", "stage")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def request_cost_usd(hourly_cost_usd: float, held_seconds: float, sharers: int = 1) -> float:
    """Cost of one request: ``hourly_cost_usd / 3600 * held_seconds / sharers``.

    ``held_seconds`` is the time the request held a stage replica: from sending it to the
    stage until the stage's answer was complete. For an item of a batch it is the batch's
    duration divided by the batch size; ``sharers`` is the number of coalesced callers that
    shared one stage call. A cache hit holds no replica and costs 0. Summed over requests,
    the cost is exactly the replica time used, priced at the replica's hourly rate.
    """
    if held_seconds <= 0 or hourly_cost_usd <= 0:
        return 0.0
    return hourly_cost_usd / 3600.0 * held_seconds / max(sharers, 1)


class GatewayMetrics:
    """The gateway's metrics in a registry of its own (several gateways may share a process)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"namespace": config.namespace, "pipeline": config.pipeline, "stage": config.stage}
        # A variant's gateway adds its label; a stage without variants has none (no empty one).
        names = LABEL_NAMES + (("variant",) if config.variant else ())
        if config.variant:
            labels["variant"] = config.variant
        r = self.registry
        self._requests = Counter(
            STAGE_REQUESTS,
            "Requests through the stage gateway, by outcome",
            [*names, "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            STAGE_REQUEST_DURATION,
            "Time from request to complete response at the stage gateway",
            names,
            buckets=DURATION_BUCKETS,
            registry=r,
        ).labels(**labels)
        self.inflight = Gauge(
            STAGE_INFLIGHT,
            "Requests being served by the stage gateway",
            names,
            registry=r,
        ).labels(**labels)
        self._lookups = Counter(
            "penstock_stage_cache_lookups_total",
            "Cache lookups by result (error: Redis unavailable, slow or entry corrupt)",
            [*names, "result"],
            registry=r,
        )
        self._stores = Counter(
            "penstock_stage_cache_stores_total",
            "Cache stores by result (stored, too_large, error)",
            [*names, "result"],
            registry=r,
        )
        self._tier_lookups = Counter(
            "penstock_stage_cache_tier_lookups_total",
            "Lookups in each cache tier (memory, pod, shared) by result; a lookup goes on to the next"
            " tier until one hits",
            [*names, "tier", "result"],
            registry=r,
        )
        self._tier_stores = Counter(
            "penstock_stage_cache_tier_stores_total",
            "Stores into each cache tier by result (fill: copied from a later tier's hit)",
            [*names, "tier", "result"],
            registry=r,
        )
        self._semantic = Counter(
            "penstock_stage_semantic_lookups_total",
            "Semantic lookups after an exact miss by result (hit, miss; no_text: the body has no"
            " text to compare; error: the embedder failed or was slow)",
            [*names, "result"],
            registry=r,
        )
        self._verifications = Counter(
            "penstock_stage_semantic_verifications_total",
            "Semantic hits also asked of the stage, by result (same; different: a false hit,"
            " the input leaves the index; error: the stage call failed)",
            [*names, "result"],
            registry=r,
        )
        self.coalesced = Counter(
            "penstock_stage_coalesced_requests_total",
            "Requests answered by another identical in-flight request's stage call",
            names,
            registry=r,
        ).labels(**labels)
        self._leases = Counter(
            "penstock_stage_shared_coalescing_total",
            "Cache misses coalesced across replicas through the shared tier's leases, by result"
            " (led: this replica called the stage for all; joined: answered by another"
            " replica's call; alone: called on its own: the other's answer could not be shared,"
            " or the lease or its notices were unavailable)",
            [*names, "result"],
            registry=r,
        )
        self.batch_size = Histogram(
            STAGE_BATCH_SIZE,
            "Items per batch sent to the stage's batch endpoint",
            names,
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(**labels)
        self.pack_items = Histogram(
            "penstock_stage_pack_items",
            "Requests packed into one prompt of the stage (batching.pack)",
            names,
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._pack_fallbacks = Counter(
            "penstock_stage_pack_fallbacks_total",
            "Packed requests sent alone after all, by reason (missing: no part of the packed"
            " answer; too_large; not_packable: no string prompt; error: the packed call failed)",
            [*names, "reason"],
            registry=r,
        )
        self.cost = Counter(
            "penstock_stage_cost_usd_total",
            "Replica cost attributed to requests: hourly cost / 3600 * seconds held",
            [*names, "cost_center"],
            registry=r,
        ).labels(**labels, cost_center=config.cost_center)
        self._saved_seconds = Counter(
            "penstock_stage_saved_seconds_total",
            "Stage replica-seconds not spent, by reason (cache, semantic, coalesced, batching)",
            [*names, "cost_center", "reason"],
            registry=r,
        )
        self._saved_usd = Counter(
            "penstock_stage_saved_usd_total",
            "Replica cost not spent, by reason: saved seconds * hourly cost / 3600",
            [*names, "cost_center", "reason"],
            registry=r,
        )
        self._tokens = Counter(
            "penstock_stage_tokens_total",
            "Tokens the stage reported using (X-Penstock-Usage or the answer's usage), by type"
            " (input, output: gen_ai.token.type)",
            [*names, "cost_center", "type"],
            registry=r,
        )
        self.ready = Gauge(
            "penstock_stage_gateway_ready",
            "1 when the stage is healthy and warmed up",
            names,
            registry=r,
        ).labels(**labels)
        self._labels = labels
        self._lookup_children = {
            result: self._lookups.labels(**labels, result=result)
            for result in ("hit", "miss", "error")
        }
        self._request_children: dict[str, Counter] = {}
        self._cost_center = config.cost_center
        self._saved_children: dict[str, tuple[Counter, Counter]] = {}
        self._token_children = {
            kind: self._tokens.labels(**labels, cost_center=config.cost_center, type=kind)
            for kind in ("input", "output")
        }

    def request(self, outcome: str) -> None:
        child = self._request_children.get(outcome)
        if child is None:
            child = self._requests.labels(**self._labels, outcome=outcome)
            self._request_children[outcome] = child
        child.inc()

    def saved(self, saving: Saving) -> None:
        children = self._saved_children.get(saving.reason)
        if children is None:
            labelled = {**self._labels, "cost_center": self._cost_center, "reason": saving.reason}
            children = (
                self._saved_seconds.labels(**labelled),
                self._saved_usd.labels(**labelled),
            )
            self._saved_children[saving.reason] = children
        children[0].inc(saving.seconds)
        if saving.usd > 0:
            children[1].inc(saving.usd)

    def pack_fallback(self, reason: str) -> None:
        self._pack_fallbacks.labels(**self._labels, reason=reason).inc()

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        self._token_children["input"].inc(input_tokens)
        self._token_children["output"].inc(output_tokens)

    def lookup(self, result: str) -> None:
        self._lookup_children[result].inc()

    def lease(self, result: str) -> None:
        self._leases.labels(**self._labels, result=result).inc()

    def store(self, result: str) -> None:
        self._stores.labels(**self._labels, result=result).inc()

    def tier_lookup(self, tier: str, result: str) -> None:
        self._tier_lookups.labels(**self._labels, tier=tier, result=result).inc()

    def tier_store(self, tier: str, result: str) -> None:
        self._tier_stores.labels(**self._labels, tier=tier, result=result).inc()

    def semantic(self, result: str) -> None:
        self._semantic.labels(**self._labels, result=result).inc()

    def verification(self, result: str) -> None:
        self._verifications.labels(**self._labels, result=result).inc()

    def tier_fill(self, tier: str, result: str) -> None:
        self.tier_store(tier, "fill" if result == "stored" else result)
