"""The topology document: the stage graph with each stage's URL, what the router runs.

The operator writes it into the per-Pipeline ConfigMap as ``topology.json`` (render/topology.py,
with the stages' Service URLs); the router reads it back (``parse_topology``). Locally the router
builds the same :class:`Topology` from a Pipeline file and ``--stage-url`` flags. Both sides go
through :meth:`Topology.from_spec` and :meth:`Topology.to_document`, so the writer and the reader
cannot drift; a bad document fails with a :class:`TopologyError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from penstock.api import PipelineSpec
from penstock.api import graph as stage_graph

ENVELOPE_INPUT = "input"
"""The key of the pipeline input in a dependant stage's request envelope."""


class TopologyError(Exception):
    """A topology or pipeline file the router cannot run; the message names the problem."""


@dataclass(frozen=True)
class StageRoute:
    name: str
    url: str
    depends_on: tuple[str, ...] = ()
    stream: bool = False
    timeout_seconds: float = 30.0
    stream_input: bool = False
    """input: stream: its one dependency's stream is its request body, as produced."""


@dataclass(frozen=True)
class Topology:
    pipeline: str
    namespace: str
    output: str
    stages: Mapping[str, StageRoute]
    latency_budget_ms: int | None = None

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        return {name: stage.depends_on for name, stage in self.stages.items()}

    def needed(self) -> frozenset[str]:
        """The stages the output transitively depends on, the output included."""
        return stage_graph.needed(self.graph, self.output)

    @classmethod
    def from_spec(
        cls, pipeline: str, namespace: str, spec: PipelineSpec, urls: Mapping[str, str]
    ) -> Topology:
        """The topology of a validated spec; urls: each stage's base URL."""
        stages = {
            stage.name: StageRoute(
                name=stage.name,
                url=urls[stage.name],
                depends_on=tuple(stage.dependencies),
                stream=stage.stream,
                timeout_seconds=float(stage.timeout_seconds),
                stream_input=stage.input == "stream",
            )
            for stage in spec.stages
        }
        return cls(pipeline, namespace, spec.output_stage, stages, spec.latency_budget_ms)

    def to_document(self) -> dict[str, Any]:
        """The ``topology.json`` document (parse_topology reads it back)."""
        return {
            "pipeline": self.pipeline,
            "namespace": self.namespace,
            "output": self.output,
            "latencyBudgetMs": self.latency_budget_ms,
            "stages": [
                {
                    "name": stage.name,
                    "dependsOn": list(stage.depends_on),
                    "url": stage.url,
                    "stream": stage.stream,
                    "input": "stream" if stage.stream_input else "envelope",
                    "timeoutSeconds": _number(stage.timeout_seconds),
                }
                for stage in self.stages.values()
            ],
        }


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def check_url(where: str, url: Any) -> str:
    if not isinstance(url, str):
        raise TopologyError(f"{where}: url must be a string (got {url!r})")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TopologyError(f"{where}: {url!r} is not an http(s)://host[:port] URL")
    return url.strip().rstrip("/")


def check_graph(source: str, topology: Topology) -> Topology:
    stages = topology.stages
    for stage in stages.values():
        for dep in stage.depends_on:
            if dep not in stages:
                raise TopologyError(
                    f"{source}: stage {stage.name!r} depends on unknown stage {dep!r}"
                    f" (stages: {', '.join(stages)})"
                )
            if dep == ENVELOPE_INPUT:
                raise TopologyError(
                    f"{source}: stage {dep!r} cannot be a dependency: its output would collide"
                    ' with the "input" key of the request envelope'
                )
    cycle = stage_graph.find_cycle(topology.graph)
    if cycle:
        raise TopologyError(f"{source}: dependency cycle: {' -> '.join(cycle)}")
    if topology.output not in stages:
        raise TopologyError(
            f"{source}: output {topology.output!r} is not a stage (stages: {', '.join(stages)})"
        )
    for stage in stages.values():
        if not stage.stream_input:
            continue
        feeds = stages[stage.depends_on[0]] if len(stage.depends_on) == 1 else None
        takers = [s.name for s in stages.values() if feeds and feeds.name in s.depends_on]
        if (
            feeds is None
            or not feeds.stream
            or takers != [stage.name]
            or feeds.name == topology.output
        ):
            raise TopologyError(
                f"{source}: stage {stage.name!r} has input: stream, so it needs exactly one"
                " dependency, a stream: true stage whose output nothing else takes"
            )
    return topology


def parse_topology(document: Any, source: str = "topology") -> Topology:
    """A topology.json document (the ConfigMap the operator renders) -> :class:`Topology`."""
    if not isinstance(document, Mapping):
        raise TopologyError(f"{source}: must be a JSON object")
    for key in ("pipeline", "output"):
        if not isinstance(document.get(key), str) or not document[key]:
            raise TopologyError(f"{source}: {key!r} must be a non-empty string")
    raw_stages = document.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise TopologyError(f"{source}: 'stages' must be a non-empty list")
    budget = document.get("latencyBudgetMs")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
    ):
        raise TopologyError(
            f"{source}: latencyBudgetMs must be a positive integer (got {budget!r})"
        )
    stages: dict[str, StageRoute] = {}
    for index, raw in enumerate(raw_stages):
        where = f"{source}: stages[{index}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise TopologyError(f"{where}: must be an object with a non-empty 'name'")
        name = raw["name"]
        if name in stages:
            raise TopologyError(f"{where}: duplicate stage name {name!r}")
        deps = raw.get("dependsOn") or []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise TopologyError(f"{where}: dependsOn must be a list of stage names")
        timeout = raw.get("timeoutSeconds", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise TopologyError(f"{where}: timeoutSeconds must be a positive number")
        given = raw.get("input", "envelope")
        if given not in ("envelope", "stream"):
            raise TopologyError(f"{where}: input must be envelope or stream (got {given!r})")
        stages[name] = StageRoute(
            name=name,
            url=check_url(f"{where} ({name})", raw.get("url")),
            depends_on=tuple(deps),
            stream=bool(raw.get("stream", False)),
            timeout_seconds=float(timeout),
            stream_input=given == "stream",
        )
    namespace = document.get("namespace") or ""
    topology = Topology(
        pipeline=document["pipeline"],
        namespace=str(namespace),
        output=document["output"],
        stages=stages,
        latency_budget_ms=budget,
    )
    return check_graph(source, topology)
