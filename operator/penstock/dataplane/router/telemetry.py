"""The router's metrics."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)

from penstock.contract.profile import VARIANT_OUTCOMES
from penstock.contract.topology import Topology
from penstock.contract.wire import DURATION_BUCKETS, VARIANT_CALL_DURATION, VARIANT_CALLS


class RouterMetrics:
    """The router's metrics in a registry of its own (several routers may share a process)."""

    def __init__(self, topology: Topology) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"namespace": topology.namespace, "pipeline": topology.pipeline}
        self._requests = Counter(
            "penstock_pipeline_requests_total",
            "Pipeline requests through the router, by outcome (ok, bad_request, stage_error,"
            " timeout, stream_aborted, client_closed, cancelled, internal_error)",
            ["namespace", "pipeline", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "penstock_pipeline_request_duration_seconds",
            "Time from request to complete pipeline response at the router",
            ["namespace", "pipeline"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        ).labels(**self._labels)
        self._children: dict[str, Counter] = {}
        variant_labels = ["namespace", "pipeline", "stage", "variant"]
        variant_calls = Counter(
            VARIANT_CALLS,
            "Calls of stage variants, by outcome (served: its answer was used; low_confidence:"
            " a cascade escalated past it; failed)",
            [*variant_labels, "outcome"],
            registry=self.registry,
        )
        variant_duration = Histogram(
            VARIANT_CALL_DURATION,
            "Time of one call of a stage variant, as the router saw it",
            variant_labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        # Every series exists from the start (a rate over a series born late misses its start).
        self._variant_calls = {
            (stage.name, variant.name, outcome): variant_calls.labels(
                **self._labels, stage=stage.name, variant=variant.name, outcome=outcome
            )
            for stage in topology.stages.values()
            for variant in stage.variants
            for outcome in VARIANT_OUTCOMES
        }
        self._variant_duration = {
            (stage.name, variant.name): variant_duration.labels(
                **self._labels, stage=stage.name, variant=variant.name
            )
            for stage in topology.stages.values()
            for variant in stage.variants
        }

    def variant_call(self, stage: str, variant: str, outcome: str, seconds: float) -> None:
        self._variant_calls[(stage, variant, outcome)].inc()
        self._variant_duration[(stage, variant)].observe(seconds)

    def request(self, outcome: str) -> None:
        child = self._children.get(outcome)
        if child is None:
            child = self._children[outcome] = self._requests.labels(**self._labels, outcome=outcome)
        child.inc()
