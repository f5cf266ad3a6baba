"""The throughput tuner: sizing, DAG awareness, hysteresis, bad data."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.api.validation import validate_spec
from penstock.controller.tuner import (
    Observation,
    PipelineGraph,
    StageInput,
    Tuner,
    capacity_per_replica,
    compute,
    critical_path,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(*stages: StageInput, output: str | None = None) -> PipelineGraph:
    return PipelineGraph(tuple(stages), output)


# retrieve and embed feed generate (the DESIGN example's shape).
RAG = chain(
    StageInput("retrieve", max_replicas=20),
    StageInput("embed", max_replicas=20),
    StageInput("generate", ("retrieve", "embed"), max_replicas=50),
    output="generate",
)


def test_sizes_from_arrival_and_measured_capacity() -> None:
    # 2 replicas, 10 rps, 100 ms, 1 in flight: capacity 10 rps per replica, utilization 0.5.
    graph = chain(StageInput("a", max_replicas=20))
    result = compute(graph, {"a": Observation(10.0, 0.1, 1.0, 2)})
    stage = result.stage("a")
    assert stage is not None
    assert stage.capacity_per_replica == pytest.approx(10.0)
    assert stage.utilization == pytest.approx(0.5)
    # ceil(10 / (10 * 0.7)) = 2
    assert stage.recommended_replicas == 2
    assert result.bottleneck == "a"


def test_declared_throughput_wins_over_measurement() -> None:
    stage = StageInput("a", target_throughput_per_replica=50.0)
    assert capacity_per_replica(stage, Observation(10.0, 0.1, 1.0, 2)) == 50.0


def test_capacity_formula() -> None:
    stage = StageInput("a")
    # Partly idle: 1 / latency (Little's law), in-flight derived from rps x latency.
    assert capacity_per_replica(stage, Observation(4.0, 0.25, None, 4)) == pytest.approx(4.0)
    # Saturated (8 in flight over 2 replicas): rps per replica actually served.
    assert capacity_per_replica(stage, Observation(30.0, 0.5, 8.0, 2)) == pytest.approx(15.0)
    # No traffic: 1 / latency; nothing known: None.
    assert capacity_per_replica(stage, Observation(0.0, 0.2, 0.0, 1)) == pytest.approx(5.0)
    assert capacity_per_replica(stage, Observation()) is None


def test_downstream_sized_from_upstream_arrival_before_load_reaches_it() -> None:
    graph = chain(
        StageInput("a", max_replicas=50),
        StageInput("b", ("a",), max_replicas=50, target_throughput_per_replica=5.0),
    )
    result = compute(graph, {"a": Observation(70.0, 0.01, None, 1), "b": Observation(0.0)})
    b = result.stage("b")
    assert b is not None
    assert b.observed_rps == 0.0
    assert b.arrival_rps == pytest.approx(70.0)
    assert b.recommended_replicas == 20  # ceil(70 / (5 * 0.7))


def test_fan_out_ratio_scales_the_upstream_arrival() -> None:
    graph = chain(
        StageInput("a", max_replicas=100),
        StageInput("b", ("a",), max_replicas=100, target_throughput_per_replica=10.0),
    )
    # b sees 3 calls per request of a; a's source rate is the arrival.
    result = compute(
        graph, {"a": Observation(20.0, 0.01, None, 1), "b": Observation(60.0, 0.1, None, 3)}
    )
    b = result.stage("b")
    assert b is not None
    assert b.arrival_rps == pytest.approx(60.0)
    assert b.recommended_replicas == math.ceil(60 / 7)


def test_join_uses_the_largest_upstream() -> None:
    observed = {
        "retrieve": Observation(10.0, 0.05, None, 1),
        "embed": Observation(10.0, 0.02, None, 1),
        "generate": Observation(None, 0.5, None, 1),
    }
    result = compute(RAG, observed)
    generate = result.stage("generate")
    assert generate is not None
    assert generate.arrival_rps == pytest.approx(10.0)
    assert generate.recommended_replicas == math.ceil(10 / (2 * 0.7))
    assert result.bottleneck == "generate"
    assert result.critical_path == ("retrieve", "generate")


def test_critical_path_follows_the_slowest_chain_to_the_output() -> None:
    graph = chain(
        StageInput("a"),
        StageInput("b", ("a",)),
        StageInput("c", ("a",)),
        StageInput("d", ("b", "c")),
        StageInput("e", ("a",)),
        output="d",
    )
    latencies = {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.1, "e": 9.0}
    assert critical_path(graph, latencies) == ("a", "c", "d")
    # Without an output: the slowest sink.
    assert critical_path(chain(*graph.stages), latencies) == ("a", "e")
    # NaN counts as unknown; nothing known: no path.
    assert critical_path(graph, dict.fromkeys(latencies, math.nan)) == ()


def test_zero_traffic_goes_to_min_replicas_after_the_window() -> None:
    clock = Clock()
    tuner = Tuner(stable_window_seconds=300, clock=clock)
    graph = chain(StageInput("a", min_replicas=2, max_replicas=20))
    busy = {"a": Observation(100.0, 0.1, None, 10)}
    first = tuner.tick("ns/p", graph, busy).stage("a")
    assert first is not None
    assert first.recommended_replicas == 15
    idle = {"a": Observation(0.0, math.nan, 0.0, 10)}
    for _ in range(10):
        clock.now += 29
        stage = tuner.tick("ns/p", graph, idle).stage("a")
        assert stage is not None
        assert stage.raw_replicas == 2
        assert stage.recommended_replicas == 15
    clock.now += 40  # 301 s after the first lower recommendation (at +29)
    stage = tuner.tick("ns/p", graph, idle).stage("a")
    assert stage is not None
    assert stage.recommended_replicas == 2
    assert stage.changed


def test_scale_down_takes_the_highest_recommendation_of_the_window() -> None:
    clock = Clock()
    tuner = Tuner(stable_window_seconds=300, clock=clock)
    graph = chain(StageInput("a", max_replicas=100, target_throughput_per_replica=10.0))

    def tick(rps: float) -> int | None:
        stage = tuner.tick("k", graph, {"a": Observation(rps, 0.1, None, 5)}).stage("a")
        assert stage is not None
        return stage.recommended_replicas

    assert tick(70.0) == 10
    clock.now += 100
    assert tick(14.0) == 10  # wants 2
    clock.now += 100
    assert tick(35.0) == 10  # wants 5
    clock.now += 100
    assert tick(7.0) == 10  # wants 1; 200 s into the window
    clock.now += 100
    assert tick(7.0) == 5  # 300 s: the highest of the window
    # Lower than 5 since the tick 100 s before: 300 s after that, down to 1.
    clock.now += 199
    assert tick(7.0) == 5
    clock.now += 1
    assert tick(7.0) == 1


def test_scale_up_is_immediate_and_resets_the_window() -> None:
    clock = Clock()
    tuner = Tuner(stable_window_seconds=300, clock=clock)
    graph = chain(StageInput("a", max_replicas=100, target_throughput_per_replica=10.0))
    observe = {"a": Observation(70.0)}
    assert tuner.tick("k", graph, observe).stages[0].recommended_replicas == 10
    clock.now += 200
    tuner.tick("k", graph, {"a": Observation(7.0)})
    clock.now += 1
    up = tuner.tick("k", graph, {"a": Observation(140.0)}).stages[0]
    assert up.recommended_replicas == 20
    assert up.changed
    clock.now += 200
    assert tuner.tick("k", graph, {"a": Observation(7.0)}).stages[0].recommended_replicas == 20


@pytest.mark.parametrize(
    "observation",
    [
        Observation(),
        Observation(math.nan, math.nan, math.nan, None),
        Observation(math.inf, 0.1, 1.0, 1),
        Observation(-5.0, -1.0, -1.0, -3),
    ],
)
def test_missing_or_bad_data_keeps_the_previous_recommendation(observation: Observation) -> None:
    clock = Clock()
    tuner = Tuner(clock=clock)
    graph = chain(StageInput("a", max_replicas=20))
    fresh = tuner.tick("k", graph, {"a": observation}).stage("a")
    assert fresh is not None
    assert fresh.recommended_replicas is None
    assert fresh.no_data
    assert fresh.reason.startswith("no data")
    tuner.tick("k", graph, {"a": Observation(50.0, 0.1, None, 4)})
    for _ in range(20):
        clock.now += 600
        stage = tuner.tick("k", graph, {"a": observation}).stage("a")
        assert stage is not None
        assert stage.no_data
        assert stage.recommended_replicas == 6  # ceil(50 / (12.5 * 0.7))
        assert not stage.changed


def test_missing_stage_in_observations_and_unknown_names_never_raise() -> None:
    graph = chain(StageInput("a"), StageInput("b", ("a", "ghost")))
    result = compute(graph, {"zzz": Observation(1.0)})
    assert [s.no_data for s in result.stages] == [True, True]
    assert result.bottleneck is None
    assert result.critical_path == ()


def test_cycle_is_left_out_without_raising() -> None:
    graph = chain(StageInput("a", ("b",)), StageInput("b", ("a",)), StageInput("c"))
    result = Tuner().tick("k", graph, {"c": Observation(1.0, 0.1, None, 1)})
    assert [s.name for s in result.stages] == ["c"]


def test_previous_recommendation_seeds_state_after_a_restart() -> None:
    clock = Clock()
    tuner = Tuner(clock=clock)
    graph = chain(StageInput("a", max_replicas=20, target_throughput_per_replica=10.0))
    stage = tuner.tick("k", graph, {"a": Observation(7.0)}, previous={"a": 12}).stages[0]
    assert stage.raw_replicas == 1
    assert stage.recommended_replicas == 12  # the scale-down window starts now


def test_bounds_edit_applies_to_the_kept_recommendation() -> None:
    tuner = Tuner(clock=Clock())
    tuner.tick("k", chain(StageInput("a", max_replicas=20)), {"a": Observation(100.0, 0.1)})
    narrowed = chain(StageInput("a", min_replicas=1, max_replicas=4))
    assert tuner.tick("k", narrowed, {}).stages[0].recommended_replicas == 4


def test_from_spec_and_forget() -> None:
    spec = validate_spec(
        {
            "output": "b",
            "stages": [
                {"name": "a", "image": "x:1", "scaling": {"minReplicas": 2}},
                {"name": "b", "image": "x:1", "dependsOn": ["a"]},
            ],
        }
    ).spec
    assert spec is not None
    graph = PipelineGraph.from_spec(spec)
    assert graph.output == "b"
    assert graph.stages[0] == StageInput("a", (), 2, 10, 0.7, None)
    assert graph.stages[1].depends_on == ("a",)
    tuner = Tuner()
    tuner.tick("k", graph, {})
    assert tuner.last("k") is not None
    tuner.forget("k")
    assert tuner.last("k") is None


# --- properties -------------------------------------------------------------------------

figures = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(math.inf),
    st.floats(min_value=-1.0, max_value=1e5, allow_nan=False),
)


@st.composite
def dags(draw: st.DrawFn) -> PipelineGraph:
    count = draw(st.integers(1, 6))
    stages = []
    for index in range(count):
        deps = draw(st.lists(st.integers(0, index - 1), max_size=3, unique=True)) if index else []
        low = draw(st.integers(1, 5))
        high = draw(st.integers(low, 40))
        stages.append(
            StageInput(
                name=f"s{index}",
                depends_on=tuple(f"s{d}" for d in deps),
                min_replicas=low,
                max_replicas=high,
                target_utilization=draw(st.floats(0.1, 1.0)),
                target_throughput_per_replica=draw(st.one_of(st.none(), st.floats(0.5, 1000.0))),
            )
        )
    return PipelineGraph(tuple(stages), f"s{count - 1}")


@st.composite
def observations(draw: st.DrawFn, graph: PipelineGraph) -> dict[str, Observation]:
    return {
        stage.name: Observation(
            rps=draw(figures),
            latency_seconds=draw(figures),
            inflight=draw(figures),
            ready_replicas=draw(st.one_of(st.none(), st.integers(-1, 60))),
        )
        for stage in graph.stages
        if draw(st.integers(0, 4))  # now and then a stage without any series
    }


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PipelineGraph, list[dict[str, Observation]]]:
    graph = draw(dags())
    return graph, [draw(observations(graph)) for _ in range(draw(st.integers(1, 6)))]


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.lists(st.floats(0, 1000), min_size=6, max_size=6))
def test_bounds_always_respected_and_never_raises(
    scenario: tuple[PipelineGraph, list[dict[str, Observation]]], steps: list[float]
) -> None:
    graph, ticks = scenario
    clock = Clock()
    tuner = Tuner(stable_window_seconds=300, clock=clock)
    bounds = {s.name: (s.min_replicas, s.max_replicas) for s in graph.stages}
    for observed, step in zip(ticks, steps, strict=False):
        clock.now += step
        result = tuner.tick("k", graph, observed)
        for stage in result.stages:
            low, high = bounds[stage.name]
            for value in (stage.recommended_replicas, stage.raw_replicas):
                assert value is None or low <= value <= high
            for number in (stage.utilization, stage.capacity_per_replica, stage.arrival_rps):
                assert number is None or (math.isfinite(number) and number >= 0)
        assert result.bottleneck is None or result.bottleneck in bounds
        assert set(result.critical_path) <= set(bounds)


@st.composite
def steady(draw: st.DrawFn) -> tuple[PipelineGraph, dict[str, Observation]]:
    graph = draw(dags())
    observed = {
        stage.name: Observation(
            rps=draw(st.floats(0.0, 500.0)),
            latency_seconds=draw(st.floats(0.001, 2.0)),
            inflight=draw(st.one_of(st.none(), st.floats(0.0, 50.0))),
            ready_replicas=draw(st.integers(1, 30)),
        )
        for stage in graph.stages
    }
    return graph, observed


@settings(max_examples=200, deadline=None)
@given(steady())
def test_balanced_utilization_on_steady_input(
    case: tuple[PipelineGraph, dict[str, Observation]],
) -> None:
    graph, observed = case
    result = compute(graph, observed)
    by_name = {s.name: s for s in graph.stages}
    for stage in result.stages:
        spec = by_name[stage.name]
        replicas = stage.recommended_replicas
        assert replicas is not None
        arrival, capacity = stage.arrival_rps, stage.capacity_per_replica
        assert arrival is not None
        if arrival == 0:
            assert replicas == spec.min_replicas
            continue
        assert capacity is not None
        projected = arrival / (capacity * replicas)
        if replicas < spec.max_replicas:
            # At or under the target ...
            assert projected <= spec.target_utilization * (1 + 1e-6)
            if replicas > spec.min_replicas:
                # ... and one replica fewer would exceed it (as close as whole replicas go).
                assert arrival / (capacity * (replicas - 1)) > spec.target_utilization * (1 - 1e-6)


@settings(max_examples=100, deadline=None)
@given(steady(), st.integers(2, 20))
def test_no_oscillation_on_stable_input(
    case: tuple[PipelineGraph, dict[str, Observation]], ticks: int
) -> None:
    graph, observed = case
    clock = Clock()
    tuner = Tuner(stable_window_seconds=300, clock=clock)
    first = tuner.tick("k", graph, observed)
    for _ in range(ticks):
        clock.now += 200
        again = tuner.tick("k", graph, observed)
        assert [s.recommended_replicas for s in again.stages] == [
            s.recommended_replicas for s in first.stages
        ]
        assert not any(s.changed for s in again.stages)
        assert (again.bottleneck, again.critical_path) == (first.bottleneck, first.critical_path)
