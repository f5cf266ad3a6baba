"""The stage graph (penstock.api.graph): the queries validation, render, the router and the tuner
share. find_cycle's properties are tested with the validation tests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.api import graph
from penstock.api.validation import validate_spec

GRAPH = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "unused": ("a",)}


def test_needed_skips_what_the_output_does_not_use() -> None:
    assert graph.needed(GRAPH, "d") == {"a", "b", "c", "d"}
    assert graph.needed(GRAPH, "b") == {"a", "b"}


def test_ready_stages_start_as_soon_as_all_inputs_exist() -> None:
    needed = ["a", "b", "c", "d"]
    assert graph.ready(GRAPH, needed, finished=[]) == ["a"]
    assert graph.ready(GRAPH, needed, finished=[], started=["a"]) == []
    assert graph.ready(GRAPH, needed, finished=["a"]) == ["b", "c"]
    assert graph.ready(GRAPH, needed, finished=["a", "b"], started=["c"]) == []
    assert graph.ready(GRAPH, needed, finished=["a", "b", "c"]) == ["d"]


def test_output_is_the_declared_stage_else_the_first_sink() -> None:
    assert graph.sinks(GRAPH) == ["d", "unused"]
    assert graph.output_stage(GRAPH) == "d"
    assert graph.output_stage(GRAPH, "b") == "b"


def test_waited_chain_follows_the_dependency_that_finished_last() -> None:
    ends = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}
    assert graph.waited_chain(GRAPH, "d", ends) == ["a", "b", "d"]
    assert graph.waited_chain(GRAPH, "d", {**ends, "c": 3.5}) == ["a", "c", "d"]
    # A stage that did not run (a skipped branch) is not waited for.
    assert graph.waited_chain(GRAPH, "d", {"a": 1.0, "c": 2.0, "d": 4.0}) == ["a", "c", "d"]


def test_slowest_chain_is_the_largest_latency_sum_not_the_last_finisher() -> None:
    latencies = {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.1, "unused": 9.0}
    assert graph.slowest_chain(GRAPH, latencies, "d") == ("a", "c", "d")
    assert graph.slowest_chain(GRAPH, latencies) == ("a", "unused")
    assert graph.slowest_chain(GRAPH, {}) == ()


def test_topological_order_puts_dependencies_first_and_leaves_cycles_out() -> None:
    assert graph.topological_order({"d": ("b", "c"), "c": ("a",), "b": ("a",), "a": ()}) == [
        "a",
        "b",
        "c",
        "d",
    ]
    cyclic = {"a": (), "x": ("y",), "y": ("x",), "behind": ("x",), "b": ("a",)}
    assert graph.topological_order(cyclic) == ["a", "b"]
    assert graph.find_cycle(cyclic) == ["x", "y", "x"]


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    names = [f"s{i}" for i in range(draw(st.integers(1, 12)))]
    order = draw(st.permutations(names))
    return {
        name: sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=i)) if i else [])
        for i, name in [(names.index(n), n) for n in order]
    }


@given(dags())
@settings(max_examples=150, deadline=None)
def test_every_stage_of_a_dag_is_ordered_after_its_dependencies(dag: dict[str, list[str]]) -> None:
    order = graph.topological_order(dag)
    assert sorted(order) == sorted(dag)
    position = {name: index for index, name in enumerate(order)}
    for name, deps in dag.items():
        assert all(position[dep] < position[name] for dep in deps)
    chain = graph.slowest_chain(dag, dict.fromkeys(dag, 1.0))
    assert chain and chain[-1] in graph.sinks(dag)
    assert all(chain[i] in dag[chain[i + 1]] for i in range(len(chain) - 1))


def test_a_spec_answers_with_the_same_graph() -> None:
    result = validate_spec(
        {
            "stages": [
                {"name": "embed", "image": "x/e:1"},
                {"name": "retrieve", "image": "x/r:1", "dependsOn": ["embed"]},
                {"name": "audit", "image": "x/a:1", "dependsOn": ["embed"]},
                {"name": "answer", "image": "x/g:1", "dependsOn": ["retrieve"]},
            ],
            "output": "answer",
        }
    )
    assert result.spec is not None
    spec = result.spec
    assert spec.graph == {
        "embed": [],
        "retrieve": ["embed"],
        "audit": ["embed"],
        "answer": ["retrieve"],
    }
    assert spec.output_stage == "answer"
    assert spec.needed_stages() == {"embed", "retrieve", "answer"}
