"""The topology document: the stage graph with each stage's URL, what the router runs.

The operator writes it into the per-Pipeline ConfigMap as ``topology.json`` (render/topology.py,
with the stages' Service URLs); the router reads it back (``parse_topology``). Locally the router
builds the same :class:`Topology` from a Pipeline file and ``--stage-url`` flags. Both sides go
through :meth:`Topology.from_spec` and :meth:`Topology.to_document`, so the writer and the reader
cannot drift; a bad document fails with a :class:`TopologyError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from penstock.api import PipelineSpec
from penstock.api import graph as stage_graph

ENVELOPE_INPUT = "input"
"""The key of the pipeline input in a dependant stage's request envelope."""


POLICIES = ("cascade", "budget", "weighted")


class TopologyError(Exception):
    """A topology or pipeline file the router cannot run; the message names the problem."""


def target(stage: str, variant: str | None) -> str:
    """What a URL is for: ``<stage>``, or ``<stage>/<variant>`` (``--stage-url`` takes both)."""
    return stage if variant is None else f"{stage}/{variant}"


@dataclass(frozen=True)
class VariantRoute:
    name: str
    url: str
    timeout_seconds: float = 30.0
    weight: int = 1
    latency_ms: int | None = None
    """The expected latency of one call before the router measured it (policy budget)."""


@dataclass(frozen=True)
class StageRoute:
    name: str
    url: str
    """The stage's URL; empty when it has variants (each has its own)."""
    depends_on: tuple[str, ...] = ()
    stream: bool = False
    timeout_seconds: float = 30.0
    stream_input: bool = False
    """input: stream: its one dependency's stream is its request body, as produced."""
    variants: tuple[VariantRoute, ...] = ()
    policy: str = "cascade"
    min_confidence: float = 0.5
    reserve_ms: int = 0

    def targets(self) -> dict[str, tuple[str, float]]:
        """{target: (url, timeout seconds)} of what the router calls for this stage."""
        if not self.variants:
            return {self.name: (self.url, self.timeout_seconds)}
        return {
            target(self.name, variant.name): (variant.url, variant.timeout_seconds)
            for variant in self.variants
        }


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
        """The topology of a validated spec; urls: each target's base URL (see ``target``)."""
        stages = {}
        for stage in spec.stages:
            policy = stage.policy
            variants = tuple(
                VariantRoute(
                    name=variant.name,
                    url=urls[target(stage.name, variant.name)],
                    timeout_seconds=float(variant.timeout_seconds or stage.timeout_seconds),
                    weight=variant.weight,
                    latency_ms=variant.latency_ms,
                )
                for variant in stage.variants or ()
            )
            stages[stage.name] = StageRoute(
                name=stage.name,
                url="" if variants else urls[stage.name],
                depends_on=tuple(stage.dependencies),
                stream=stage.stream,
                timeout_seconds=float(stage.timeout_seconds),
                stream_input=stage.input == "stream",
                variants=variants,
                policy=policy.type,
                min_confidence=policy.min_confidence,
                reserve_ms=policy.reserve_ms,
            )
        return cls(pipeline, namespace, spec.output_stage, stages, spec.latency_budget_ms)

    def to_document(self) -> dict[str, Any]:
        """The ``topology.json`` document (parse_topology reads it back)."""
        return {
            "pipeline": self.pipeline,
            "namespace": self.namespace,
            "output": self.output,
            "latencyBudgetMs": self.latency_budget_ms,
            "stages": [_stage_document(stage) for stage in self.stages.values()],
        }


def _stage_document(stage: StageRoute) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": stage.name,
        "dependsOn": list(stage.depends_on),
        "url": stage.url,
        "stream": stage.stream,
        "input": "stream" if stage.stream_input else "envelope",
        "timeoutSeconds": _number(stage.timeout_seconds),
    }
    if stage.variants:
        del document["url"]
        document["variants"] = [
            {
                "name": variant.name,
                "url": variant.url,
                "timeoutSeconds": _number(variant.timeout_seconds),
                "weight": variant.weight,
                "latencyMs": variant.latency_ms,
            }
            for variant in stage.variants
        ]
        document["variantPolicy"] = {
            "type": stage.policy,
            "minConfidence": stage.min_confidence,
            "reserveMs": stage.reserve_ms,
        }
    return document


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
        if stage.stream_input and stage.variants:
            raise TopologyError(
                f"{source}: stage {stage.name!r} has input: stream, so it cannot have variants"
                " (a streamed input cannot be sent twice)"
            )
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


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def _parse_variants(where: str, route: StageRoute, raw: Any, raw_policy: Any) -> StageRoute:
    if not isinstance(raw, list) or len(raw) < 2:
        raise TopologyError(f"{where}: variants must be a list of at least two variants")
    variants: list[VariantRoute] = []
    for index, item in enumerate(raw):
        at = f"{where}.variants[{index}]"
        if (
            not isinstance(item, Mapping)
            or not isinstance(item.get("name"), str)
            or not item["name"]
        ):
            raise TopologyError(f"{at}: must be an object with a non-empty 'name'")
        if any(variant.name == item["name"] for variant in variants):
            raise TopologyError(f"{at}: duplicate variant name {item['name']!r}")
        timeout = item.get("timeoutSeconds", route.timeout_seconds)
        weight = item.get("weight", 1)
        latency = item.get("latencyMs")
        if not _positive(timeout):
            raise TopologyError(f"{at}: timeoutSeconds must be a positive number")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise TopologyError(f"{at}: weight must be a non-negative integer")
        if latency is not None and not (_positive(latency) and isinstance(latency, int)):
            raise TopologyError(f"{at}: latencyMs must be a positive integer")
        url = check_url(f"{at} ({route.name}/{item['name']})", item.get("url"))
        variants.append(VariantRoute(item["name"], url, float(timeout), weight, latency))
    policy = raw_policy if raw_policy is not None else {}
    if not isinstance(policy, Mapping) or policy.get("type", "cascade") not in POLICIES:
        raise TopologyError(f"{where}: variantPolicy.type must be one of {', '.join(POLICIES)}")
    confidence = policy.get("minConfidence", 0.5)
    reserve = policy.get("reserveMs", 0)
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0 <= confidence <= 1
    ):
        raise TopologyError(f"{where}: variantPolicy.minConfidence must be a number in [0, 1]")
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise TopologyError(f"{where}: variantPolicy.reserveMs must be a non-negative integer")
    if policy.get("type") == "weighted" and not any(variant.weight for variant in variants):
        raise TopologyError(f"{where}: variantPolicy weighted needs a variant with weight > 0")
    return replace(
        route,
        variants=tuple(variants),
        policy=str(policy.get("type", "cascade")),
        min_confidence=float(confidence),
        reserve_ms=reserve,
    )


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
        route = StageRoute(
            name=name,
            url="",
            depends_on=tuple(deps),
            stream=bool(raw.get("stream", False)),
            timeout_seconds=float(timeout),
            stream_input=given == "stream",
        )
        if raw.get("variants") is None:
            route = replace(route, url=check_url(f"{where} ({name})", raw.get("url")))
        else:
            route = _parse_variants(where, route, raw.get("variants"), raw.get("variantPolicy"))
        stages[name] = route
    namespace = document.get("namespace") or ""
    topology = Topology(
        pipeline=document["pipeline"],
        namespace=str(namespace),
        output=document["output"],
        stages=stages,
        latency_budget_ms=budget,
    )
    return check_graph(source, topology)
