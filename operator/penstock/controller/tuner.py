"""Throughput tuner: per-stage replica recommendations from observed load. Pure logic, no I/O.

Input per stage (from the gateways' metrics, see prometheus.py): request rate (rps), mean
latency (seconds), mean in-flight requests, ready replicas; any may be missing or NaN.

Definitions (what the status fields mean):

- capacity per replica: requests per second one busy replica serves.
  1. ``scaling.targetThroughputPerReplica`` when the stage declares it: a measurement only sees
     the load a stage was given, the user knows its concurrency.
  2. Otherwise measured: observed rps per replica divided by the replicas' busy fraction
     ``min(1, inflight / replicas)``, i.e. ``rps / min(replicas, inflight)``. While replicas
     are partly idle this is ``1 / latency`` (Little's law); once they are saturated it is the
     rps per replica actually served (a lower bound, so the stage is scaled up). Without an
     in-flight figure, in-flight = rps x latency. Without traffic: ``1 / latency``.
  This assumes a replica serves one request at a time; a stage that serves concurrently is
  over-provisioned until it declares targetThroughputPerReplica.
- arrival rate: a source stage's is its observed rps. A downstream stage's is the largest
  expected arrival of its dependencies x its observed fan-out (its rps / the largest observed
  rps of its dependencies; 1.0 when either is unknown or zero), so it is sized from upstream
  load before that load reaches it.
- utilization: arrival / (capacity x ready replicas); None without ready replicas.
- recommended replicas: ceil(arrival / (capacity x targetUtilization)) within [min, max];
  min replicas at zero traffic.
- bottleneck: the stage with the highest utilization at its current replicas.
- critical path: the chain from a source to the output stage with the largest sum of mean
  latencies.

Hysteresis (Tuner): a higher recommendation applies at once; a lower one only after the
recommendations have stayed below the applied value for the stable window, and then the
highest of them. Missing data keeps the previous recommendation. Nothing here raises on bad
figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from penstock.api import PipelineSpec
from penstock.api import graph as stage_graph

DEFAULT_STABLE_WINDOW_SECONDS = 300.0
_EPSILON = 1e-9


@dataclass(frozen=True)
class StageInput:
    """One stage of the graph with its scaling bounds and targets."""

    name: str
    depends_on: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 10
    target_utilization: float = 0.7
    target_throughput_per_replica: float | None = None


@dataclass(frozen=True)
class PipelineGraph:
    stages: tuple[StageInput, ...]
    output: str | None = None

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> PipelineGraph:
        stages = []
        for stage in spec.stages:
            scaling = stage.scaling_or_default
            stages.append(
                StageInput(
                    name=stage.name,
                    depends_on=tuple(stage.dependencies),
                    min_replicas=scaling.min_replicas,
                    max_replicas=scaling.effective_max_replicas,
                    target_utilization=scaling.target_utilization,
                    target_throughput_per_replica=scaling.target_throughput_per_replica,
                )
            )
        return cls(stages=tuple(stages), output=spec.output)

    @property
    def dependencies(self) -> dict[str, tuple[str, ...]]:
        return {stage.name: stage.depends_on for stage in self.stages}


@dataclass(frozen=True)
class Observation:
    """Observed figures of one stage; None (or NaN) where a series is missing."""

    rps: float | None = None
    latency_seconds: float | None = None
    inflight: float | None = None
    ready_replicas: int | None = None


@dataclass(frozen=True)
class StageResult:
    name: str
    observed_rps: float | None
    arrival_rps: float | None
    """Expected arrival rate (DAG-propagated), the figure replicas are sized from."""
    capacity_per_replica: float | None
    utilization: float | None
    """Arrival over the capacity of the current ready replicas."""
    recommended_replicas: int | None
    """After hysteresis; None until the first usable data."""
    raw_replicas: int | None
    """Before hysteresis (what the current data alone asks for)."""
    no_data: bool
    reason: str
    changed: bool = False
    """The recommendation differs from the previous one (for an Event)."""


@dataclass(frozen=True)
class PipelineResult:
    stages: tuple[StageResult, ...]
    bottleneck: str | None
    critical_path: tuple[str, ...]

    def stage(self, name: str) -> StageResult | None:
        return next((item for item in self.stages if item.name == name), None)


def _num(value: object) -> float | None:
    """A finite, non-negative float, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        return None
    return number


def _replicas(value: object) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def _bounds(stage: StageInput) -> tuple[int, int]:
    low = max(1, int(stage.min_replicas))
    return low, max(low, int(stage.max_replicas))


def _clamp(value: int, stage: StageInput) -> int:
    low, high = _bounds(stage)
    return min(high, max(low, value))


def capacity_per_replica(stage: StageInput, seen: Observation) -> float | None:
    """Requests per second one busy replica serves (see the module docstring)."""
    declared = _num(stage.target_throughput_per_replica)
    if declared:
        return declared
    rps, latency = _num(seen.rps), _num(seen.latency_seconds)
    inflight, replicas = _num(seen.inflight), _replicas(seen.ready_replicas)
    if rps and replicas:
        if inflight is None and latency is not None:
            inflight = rps * latency
        measured = _ratio(rps, min(float(replicas), inflight)) if inflight else None
        if measured:
            return measured
    if latency:
        return _ratio(1.0, latency)
    return None


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator when finite, else None (never raises)."""
    try:
        return _num(numerator / denominator)
    except (ZeroDivisionError, OverflowError):
        return None


def replicas_for(arrival: float, capacity: float, stage: StageInput) -> int:
    target = min(1.0, max(_EPSILON, stage.target_utilization))
    wanted = _ratio(arrival, capacity * target)
    if wanted is None:  # overflow: more than any bound
        return _bounds(stage)[1]
    return _clamp(math.ceil(wanted - _EPSILON * max(1.0, wanted)), stage)


def critical_path(graph: PipelineGraph, latencies: Mapping[str, float | None]) -> tuple[str, ...]:
    """The status' criticalPath: the slowest chain by mean latency (penstock.api.graph)."""
    known = {name: _num(value) for name, value in latencies.items()}
    return stage_graph.slowest_chain(graph.dependencies, known, graph.output)


def compute(graph: PipelineGraph, observed: Mapping[str, Observation]) -> PipelineResult:
    """Recommendations from one set of figures, without hysteresis."""
    results: list[StageResult] = []
    seen_rps: dict[str, float | None] = {}
    arrival: dict[str, float | None] = {}
    by_name = {stage.name: stage for stage in graph.stages}
    for stage in (by_name[name] for name in stage_graph.topological_order(graph.dependencies)):
        seen = observed.get(stage.name) or Observation()
        rps = _num(seen.rps)
        seen_rps[stage.name] = rps
        deps = [d for d in stage.depends_on if d in arrival]
        upstream = [a for a in (arrival[d] for d in deps) if a is not None]
        if not deps:
            expected = rps
        elif upstream:
            upstream_seen = [r for r in (seen_rps[d] for d in deps) if r is not None]
            top_seen = max(upstream_seen, default=0.0)
            fan_out = (_ratio(rps, top_seen) if rps and top_seen else None) or 1.0
            expected = _num(max(upstream) * fan_out)
        else:
            expected = rps
        arrival[stage.name] = expected
        capacity = _num(capacity_per_replica(stage, seen))
        replicas = _replicas(seen.ready_replicas)
        utilization = None
        if expected is not None and capacity and replicas:
            utilization = _ratio(expected, capacity * replicas)
        raw: int | None
        if expected is None:
            raw, reason = None, "no data: request rate missing"
        elif expected == 0:
            raw, reason = _bounds(stage)[0], "no traffic"
        elif not capacity:
            raw, reason = None, "no data: latency missing, capacity unknown"
        else:
            raw = replicas_for(expected, capacity, stage)
            reason = f"{expected:.3g} rps at {capacity:.3g} rps per replica"
        results.append(
            StageResult(
                name=stage.name,
                observed_rps=rps,
                arrival_rps=expected,
                capacity_per_replica=capacity,
                utilization=utilization,
                recommended_replicas=raw,
                raw_replicas=raw,
                no_data=raw is None,
                reason=reason,
            )
        )
    loaded = [r for r in results if r.utilization is not None]
    bottleneck = max(loaded, key=lambda r: r.utilization or 0.0).name if loaded else None
    latencies = {name: (observed.get(name) or Observation()).latency_seconds for name in arrival}
    return PipelineResult(tuple(results), bottleneck, critical_path(graph, latencies))


@dataclass
class _StageState:
    applied: int
    lower_since: float | None = None
    """Start of the current run of recommendations below `applied`."""
    lower: list[tuple[float, int]] = field(default_factory=list)
    """That run's (time, recommendation) of the last stable window."""


@dataclass
class Tuner:
    """compute() plus hysteresis, keeping state per (pipeline key, stage)."""

    stable_window_seconds: float = DEFAULT_STABLE_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _state: dict[str, dict[str, _StageState]] = field(default_factory=dict)
    _last: dict[str, PipelineResult] = field(default_factory=dict)

    def tick(
        self,
        key: str,
        graph: PipelineGraph,
        observed: Mapping[str, Observation],
        previous: Mapping[str, int | None] | None = None,
    ) -> PipelineResult:
        """One tuning step for one pipeline. `previous` seeds stages without state (e.g. the
        recommendedReplicas in the status after an operator restart)."""
        now = self.clock()
        raw = compute(graph, observed)
        states = self._state.setdefault(key, {})
        by_name = {stage.name: stage for stage in graph.stages}
        for gone in set(states) - set(by_name):
            del states[gone]
        stages = []
        for item in raw.stages:
            stage = by_name[item.name]
            state = states.get(item.name)
            if state is None and previous is not None:
                seeded = _replicas(previous.get(item.name))
                if seeded:
                    state = states[item.name] = _StageState(_clamp(seeded, stage))
            before = state.applied if state else None
            applied = self._step(states, item, stage, state, now)
            stages.append(
                StageResult(
                    name=item.name,
                    observed_rps=item.observed_rps,
                    arrival_rps=item.arrival_rps,
                    capacity_per_replica=item.capacity_per_replica,
                    utilization=item.utilization,
                    recommended_replicas=applied,
                    raw_replicas=item.raw_replicas,
                    no_data=item.no_data,
                    reason=item.reason,
                    changed=applied is not None and applied != before,
                )
            )
        result = PipelineResult(tuple(stages), raw.bottleneck, raw.critical_path)
        self._last[key] = result
        return result

    def _step(
        self,
        states: dict[str, _StageState],
        item: StageResult,
        stage: StageInput,
        state: _StageState | None,
        now: float,
    ) -> int | None:
        wanted = item.raw_replicas
        if wanted is None:
            # No data: keep what was recommended (within the current bounds).
            if state is None:
                return None
            state.applied = _clamp(state.applied, stage)
            return state.applied
        if state is None:
            states[item.name] = _StageState(wanted)
            return wanted
        state.applied = _clamp(state.applied, stage)
        if wanted >= state.applied:
            state.applied, state.lower_since, state.lower = wanted, None, []
            return wanted
        window = self.stable_window_seconds
        if state.lower_since is None:
            state.lower_since = now
        state.lower = [(t, r) for t, r in state.lower if now - t <= window]
        state.lower.append((now, wanted))
        if now - state.lower_since >= window:
            # Lower for a whole window: down to the highest recommendation of that window.
            state.applied = max(r for _, r in state.lower)
            # What follows the last sample at that level is the next run below it.
            last = max(i for i, (_, r) in enumerate(state.lower) if r >= state.applied)
            state.lower = state.lower[last + 1 :]
            state.lower_since = state.lower[0][0] if state.lower else None
        return state.applied

    def last(self, key: str) -> PipelineResult | None:
        return self._last.get(key)

    def forget(self, key: str) -> None:
        self._state.pop(key, None)
        self._last.pop(key, None)
