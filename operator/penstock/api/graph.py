"""The stage graph: pure functions over ``{stage: its dependencies}`` in declaration order.

The one place every part asks graph questions: validation (cycles), render and the router (the
output stage, the stages it needs, which stages may start), the tuner (dependencies first, the
slowest chain). No pydantic, no I/O; a dependency on an unknown stage is ignored here (validation
reports it).

Two different "critical paths", with two names:

- :func:`slowest_chain`: the *expected* one. The chain from a source to the output with the
  largest sum of mean stage latencies, computed by the tuner from the gateways' metrics. It is
  the Pipeline status field ``criticalPath``: where shaving latency shortens the typical request.
- :func:`waited_chain`: the *observed* one, of a single request. From the output, step to the
  dependency that finished last (the one each stage waited for). It is the router profile's
  ``critical_path``: why this request took as long as it did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

Graph = Mapping[str, Sequence[str]]
"""Stage name -> the names of the stages it depends on, in declaration order."""


def _deps(graph: Graph, name: str) -> list[str]:
    return [dep for dep in graph.get(name, ()) if dep in graph]


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]`` (a depends on b ...), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dependency in _deps(graph, node):
            if state.get(dependency) == 1:
                return [*path[path.index(dependency) :], dependency]
            if dependency not in state and (cycle := visit(dependency)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def topological_order(graph: Graph) -> list[str]:
    """Every stage after its dependencies, otherwise in declaration order (depth first).

    A stage in a cycle, or behind one, is left out: it never has every dependency placed.
    """
    visited: set[str] = set()
    placed: set[str] = set()
    order: list[str] = []
    for name in graph:
        stack: list[tuple[str, int]] = [(name, 0)]
        while stack:
            current, index = stack.pop()
            if index == 0:
                if current in visited:
                    continue
                visited.add(current)
            deps = _deps(graph, current)
            if index < len(deps):
                stack.append((current, index + 1))
                if deps[index] not in visited:
                    stack.append((deps[index], 0))
                continue
            if all(dep in placed for dep in deps):
                placed.add(current)
                order.append(current)
    return order


def sinks(graph: Graph) -> list[str]:
    """The stages no other stage depends on, in declaration order."""
    consumed = {dep for name in graph for dep in _deps(graph, name)}
    return [name for name in graph if name not in consumed]


def output_stage(graph: Graph, declared: str | None = None) -> str:
    """The stage whose result is the answer: the declared one, else the first sink."""
    if declared:
        return declared
    found = sinks(graph)
    if not found:
        raise ValueError("the stage graph has no sink (every stage is depended on: a cycle)")
    return found[0]


def needed(graph: Graph, output: str) -> frozenset[str]:
    """The stages the output transitively depends on, the output included."""
    result: set[str] = set()
    pending = [output]
    while pending:
        name = pending.pop()
        if name not in result:
            result.add(name)
            pending.extend(_deps(graph, name))
    return frozenset(result)


def ready(
    graph: Graph, candidates: Iterable[str], finished: Iterable[str], started: Iterable[str] = ()
) -> list[str]:
    """The candidates not started yet whose every dependency has finished, in candidate order."""
    done = set(finished)
    begun = done | set(started)
    return [
        name
        for name in candidates
        if name not in begun and all(dep in done for dep in _deps(graph, name))
    ]


def slowest_chain(
    graph: Graph, latencies: Mapping[str, float | None], output: str | None = None
) -> tuple[str, ...]:
    """The expected critical path: the chain ending at ``output`` (else at the slowest sink) with
    the largest sum of latencies; a stage without a figure counts 0. () without any figure."""
    order = topological_order(graph)
    if not any(latencies.get(name) is not None for name in order):
        return ()
    best: dict[str, tuple[float, tuple[str, ...]]] = {}
    for name in order:
        own = latencies.get(name) or 0.0
        parents = [best[dep] for dep in _deps(graph, name) if dep in best]
        total, path = max(parents, key=lambda item: item[0]) if parents else (0.0, ())
        best[name] = (total + own, (*path, name))
    if output in best:
        return best[output][1]
    ends = [best[name] for name in sinks(graph) if name in best]
    return max(ends, key=lambda item: item[0])[1] if ends else ()


def waited_chain(graph: Graph, output: str, end_ms: Mapping[str, float]) -> list[str]:
    """The observed critical path of one request, first stage to output: from the output,
    repeatedly step to the dependency that finished last among those that ran (in ``end_ms``)."""
    path = [output]
    current = output
    while True:
        deps = [dep for dep in _deps(graph, current) if dep in end_ms]
        if not deps:
            break
        current = max(deps, key=lambda dep: end_ms[dep])
        path.append(current)
    return path[::-1]
