"""The router's metrics."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)

from penstock.contract.topology import Topology
from penstock.contract.wire import DURATION_BUCKETS


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

    def request(self, outcome: str) -> None:
        child = self._children.get(outcome)
        if child is None:
            child = self._children[outcome] = self._requests.labels(**self._labels, outcome=outcome)
        child.inc()
