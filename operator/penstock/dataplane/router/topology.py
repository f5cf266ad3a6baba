"""The router's view of a pipeline: the stage graph, and pure functions over it.

A :class:`Topology` comes from the topology ConfigMap's ``topology.json`` (in the cluster, stage
URLs inside) or from a Pipeline YAML plus ``--stage-url NAME=URL`` flags (locally). Loading
either fails with a :class:`TopologyError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from penstock.api.validation import validate_document
from penstock.contract.topology import (
    Topology,
    TopologyError,
    check_graph,
    check_url,
    parse_topology,
    target,
)
from penstock.safeyaml import DocumentError, load_yaml_file


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
        urls[name.strip()] = check_url(f"--stage-url {name.strip()}", url)
    return urls


def pipeline_topology(document: Any, stage_urls: Mapping[str, str], source: str) -> Topology:
    """A Pipeline document (validated like ``kubectl apply`` would) plus stage URLs."""
    result = validate_document(document)
    if not result.valid or result.spec is None:
        raise TopologyError(f"{source}: invalid Pipeline: {result.summary()}")
    spec = result.spec
    targets = {
        target(workload.stage.name, workload.variant): workload.stage.name
        for workload in spec.workloads()
    }
    names = list(targets)
    unknown = sorted(set(stage_urls) - set(names))
    if unknown:
        raise TopologyError(
            f"--stage-url names no stage of {source}: {', '.join(unknown)}"
            f" (stages: {', '.join(names)}; a variant is <stage>/<variant>)"
        )
    needed = spec.needed_stages()
    missing = [name for name in names if targets[name] in needed and name not in stage_urls]
    if missing:
        raise TopologyError(
            f"no --stage-url for stage {missing[0]!r}"
            + (f" (missing: {', '.join(missing)})" if len(missing) > 1 else "")
            + f": give --stage-url {missing[0]}=http://HOST:PORT"
        )
    metadata = document.get("metadata") or {}
    # Unneeded stages are never called; they need no URL.
    urls = {name: stage_urls.get(name, "http://unused.invalid") for name in names}
    namespace = str(metadata.get("namespace") or "default")
    topology = Topology.from_spec(str(metadata.get("name", "")), namespace, spec, urls)
    return check_graph(source, topology)


def load_pipeline(path: str | Path, stage_urls: Mapping[str, str]) -> Topology:
    try:
        documents = [body for _, body in load_yaml_file(str(path))]
    except DocumentError as error:  # the bounded loader every CLI YAML read uses
        raise TopologyError(str(error)) from None
    if len(documents) != 1:
        raise TopologyError(f"{path}: expected one Pipeline document (got {len(documents)})")
    return pipeline_topology(documents[0], stage_urls, str(path))
