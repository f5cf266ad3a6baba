"""The router's view of a pipeline: the stage graph, and pure functions over it.

A :class:`Topology` comes from the topology ConfigMap's ``topology.json`` (in the cluster, stage
URLs inside) or from a Pipeline YAML plus ``--stage-url NAME=URL`` flags (locally). Loading
either fails with a :class:`TopologyError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from penstock.api import graph as stage_graph
from penstock.api.validation import validate_document
from penstock.safeyaml import DocumentError, load_yaml_file

ENVELOPE_INPUT = "input"


class TopologyError(Exception):
    """A topology or pipeline file the router cannot run; the message names the problem."""


@dataclass(frozen=True)
class StageRoute:
    name: str
    url: str
    depends_on: tuple[str, ...] = ()
    stream: bool = False
    timeout_seconds: float = 30.0


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


def envelope_body(
    depends_on: tuple[str, ...], raw_input: bytes, outputs: Mapping[str, bytes]
) -> bytes:
    """The request body of a stage, by the DESIGN stage contract, from JSON documents as bytes.

    Without dependencies: the pipeline input itself. With dependencies:
    ``{"input": <pipeline input>, "<dep>": <dep output>, ...}``. The JSON pieces are spliced
    unchanged (each was validated as JSON when it arrived), so nothing is re-encoded.
    """
    if not depends_on:
        return raw_input
    parts = [b'{"input":', raw_input]
    for dep in depends_on:
        parts += [b",", json.dumps(dep).encode(), b":", outputs[dep]]
    parts.append(b"}")
    return b"".join(parts)


# --------------------------------------------------------------------------- loading


def _check_url(where: str, url: Any) -> str:
    if not isinstance(url, str):
        raise TopologyError(f"{where}: url must be a string (got {url!r})")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TopologyError(f"{where}: {url!r} is not an http(s)://host[:port] URL")
    return url.strip().rstrip("/")


def _check_graph(source: str, topology: Topology) -> Topology:
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
        stages[name] = StageRoute(
            name=name,
            url=_check_url(f"{where} ({name})", raw.get("url")),
            depends_on=tuple(deps),
            stream=bool(raw.get("stream", False)),
            timeout_seconds=float(timeout),
        )
    namespace = document.get("namespace") or ""
    topology = Topology(
        pipeline=document["pipeline"],
        namespace=str(namespace),
        output=document["output"],
        stages=stages,
        latency_budget_ms=budget,
    )
    return _check_graph(source, topology)


def load_topology(path: str | Path) -> Topology:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise TopologyError(f"cannot read topology {path}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise TopologyError(f"{path}: not valid JSON: {error}") from None
    return parse_topology(document, str(path))


def parse_stage_urls(items: Iterable[str]) -> dict[str, str]:
    """``["embed=http://127.0.0.1:9001", ...]`` -> ``{"embed": "http://127.0.0.1:9001"}``."""
    urls: dict[str, str] = {}
    for item in items:
        name, sep, url = item.strip().partition("=")
        if not sep or not name.strip():
            raise TopologyError(f"--stage-url {item!r} is not NAME=URL")
        urls[name.strip()] = _check_url(f"--stage-url {name.strip()}", url)
    return urls


def pipeline_topology(document: Any, stage_urls: Mapping[str, str], source: str) -> Topology:
    """A Pipeline document (validated like ``kubectl apply`` would) plus stage URLs."""
    result = validate_document(document)
    if not result.valid or result.spec is None:
        raise TopologyError(f"{source}: invalid Pipeline: {result.summary()}")
    spec = result.spec
    names = [stage.name for stage in spec.stages]
    unknown = sorted(set(stage_urls) - set(names))
    if unknown:
        raise TopologyError(
            f"--stage-url names no stage of {source}: {', '.join(unknown)}"
            f" (stages: {', '.join(names)})"
        )
    needed = spec.needed_stages()
    missing = [name for name in names if name in needed and name not in stage_urls]
    if missing:
        raise TopologyError(
            f"no --stage-url for stage {missing[0]!r}"
            + (f" (missing: {', '.join(missing)})" if len(missing) > 1 else "")
            + f": give --stage-url {missing[0]}=http://HOST:PORT"
        )
    metadata = document.get("metadata") or {}
    stages = {
        stage.name: StageRoute(
            name=stage.name,
            # Unneeded stages are never called; they need no URL.
            url=stage_urls.get(stage.name, "http://unused.invalid"),
            depends_on=tuple(stage.dependencies),
            stream=stage.stream,
            timeout_seconds=float(stage.timeout_seconds),
        )
        for stage in spec.stages
    }
    topology = Topology(
        pipeline=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace") or "default"),
        output=spec.output_stage,
        stages=stages,
        latency_budget_ms=spec.latency_budget_ms,
    )
    return _check_graph(source, topology)


def load_pipeline(path: str | Path, stage_urls: Mapping[str, str]) -> Topology:
    try:
        documents = [body for _, body in load_yaml_file(str(path))]
    except DocumentError as error:  # the bounded loader every CLI YAML read uses
        raise TopologyError(str(error)) from None
    if len(documents) != 1:
        raise TopologyError(f"{path}: expected one Pipeline document (got {len(documents)})")
    return pipeline_topology(documents[0], stage_urls, str(path))
