"""Validation beyond the schema, shared by the operator and the CLI.

Every problem names the field path and the bad value, so a user can fix it without reading code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from penstock.api.pipeline import PipelineSpec
from penstock.api.types import API_VERSION, KIND, is_dns1123_label, parse_quantity

MAX_PIPELINE_NAME = 63
RESERVED_STAGE_NAME = "router"
_UNION_BRANCHES = {"int", "str", "float", "bool", "list", "dict", "none"}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Result:
    """The outcome of validating one Pipeline: a spec when valid, errors otherwise."""

    spec: PipelineSpec | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and self.spec is not None

    def summary(self) -> str:
        return "; ".join(str(problem) for problem in self.errors)


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in _UNION_BRANCHES and "[" not in part:
            text += f".{part}"
        # other parts name the branch of a union (int, str, function-after[...]): not a field
    return text


def _pydantic_problems(error: ValidationError, prefix: str) -> list[Problem]:
    problems: dict[str, Problem] = {}
    for item in error.errors(include_url=False):
        path = _path(tuple(item["loc"]), prefix)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] != "missing" and repr(item.get("input")) not in message:
            message += f" (got {item.get('input')!r})"
        # A union (int or quantity string) fails once per branch: keep the most specific message.
        if path not in problems or "quantity" in message:
            problems[path] = Problem(path, message)
    return list(problems.values())


def find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """Return one cycle as [a, b, ..., a] in the dependsOn graph, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dependency in graph.get(node, []):
            if dependency not in graph:
                continue
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


def output_stage(spec: PipelineSpec) -> str:
    """The stage whose result is the answer: spec.output, else the single sink."""
    if spec.output:
        return spec.output
    consumed = {dep for stage in spec.stages for dep in stage.dependencies}
    sinks = [stage.name for stage in spec.stages if stage.name not in consumed]
    return sinks[0]


def needed_stages(spec: PipelineSpec) -> set[str]:
    """Stages the output transitively depends on, the output included."""
    needed: set[str] = set()
    pending = [output_stage(spec)]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(spec.stage(name).dependencies)
    return needed


def _graph_problems(spec: PipelineSpec) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    names = [stage.name for stage in spec.stages]
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name == RESERVED_STAGE_NAME:
            errors.append(
                Problem(
                    f"spec.stages[{index}].name", "'router' is reserved for the pipeline's router"
                )
            )
        if name in seen:
            errors.append(Problem(f"spec.stages[{index}].name", f"duplicate stage name {name!r}"))
        seen.add(name)
    for index, stage in enumerate(spec.stages):
        deps = stage.dependencies
        for dep_index, dep in enumerate(deps):
            where = f"spec.stages[{index}].dependsOn[{dep_index}]"
            if dep == stage.name:
                errors.append(Problem(where, f"stage {stage.name!r} cannot depend on itself"))
            elif dep not in seen:
                errors.append(
                    Problem(where, f"no stage named {dep!r} (stages: {', '.join(names)})")
                )
        if len(set(deps)) != len(deps):
            errors.append(
                Problem(f"spec.stages[{index}].dependsOn", f"duplicate entries in {deps}")
            )
    if errors:
        return errors, warnings
    cycle = find_cycle({stage.name: stage.dependencies for stage in spec.stages})
    if cycle:
        index = names.index(cycle[0])
        errors.append(
            Problem(f"spec.stages[{index}].dependsOn", f"dependency cycle: {' -> '.join(cycle)}")
        )
        return errors, warnings
    consumed = {dep for stage in spec.stages for dep in stage.dependencies}
    sinks = [name for name in names if name not in consumed]
    if spec.output is not None:
        if spec.output not in seen:
            errors.append(
                Problem(
                    "spec.output", f"no stage named {spec.output!r} (stages: {', '.join(names)})"
                )
            )
            return errors, warnings
    elif len(sinks) > 1:
        errors.append(
            Problem(
                "spec.output",
                f"required when several stages have no consumer ({', '.join(sinks)}): "
                "name the stage whose result is the pipeline's answer",
            )
        )
        return errors, warnings
    needed = needed_stages(spec)
    for index, name in enumerate(names):
        if name not in needed:
            warnings.append(
                Problem(
                    f"spec.stages[{index}]",
                    f"the result of stage {name!r} is never used by the output "
                    f"{output_stage(spec)!r}; the router will not call it (remove it: "
                    "the fastest operation is the one you skip)",
                )
            )
    return errors, warnings


def _value_problems(spec: PipelineSpec) -> list[Problem]:
    errors = []
    for index, stage in enumerate(spec.stages):
        scaling = stage.scaling
        if (
            scaling
            and scaling.max_replicas is not None
            and scaling.min_replicas > scaling.max_replicas
        ):
            errors.append(
                Problem(
                    f"spec.stages[{index}].scaling.minReplicas",
                    f"{scaling.min_replicas} is larger than maxReplicas {scaling.max_replicas}",
                )
            )
        if (
            stage.model
            and stage.model.size_limit is not None
            and parse_quantity(stage.model.size_limit) <= 0
        ):
            errors.append(Problem(f"spec.stages[{index}].model.sizeLimit", "must be positive"))
        if stage.cache and parse_quantity(stage.cache.max_memory) < 1024 * 1024:
            errors.append(
                Problem(
                    f"spec.stages[{index}].cache.maxMemory",
                    f"{stage.cache.max_memory!r} is below Redis' practical minimum of 1Mi",
                )
            )
        if stage.cache and parse_quantity(stage.cache.max_entry_size) < 1:
            errors.append(
                Problem(f"spec.stages[{index}].cache.maxEntrySize", "must be at least 1 (byte)")
            )
        if stage.batching and stage.stream:
            errors.append(
                Problem(f"spec.stages[{index}].batching", "a streaming stage cannot be batched")
            )
        reserved = {stage.port} & {9090, 9091, 6379}
        if reserved:
            errors.append(
                Problem(
                    f"spec.stages[{index}].port",
                    f"{stage.port} is reserved for Penstock's sidecars (6379, 9090, 9091)",
                )
            )
    return errors


def validate_spec(raw: Any, prefix: str = "spec") -> Result:
    """Validate a spec mapping: schema (pydantic) then graph and cross-field rules."""
    if not isinstance(raw, Mapping):
        return Result(errors=[Problem(prefix, f"must be a mapping (got {type(raw).__name__})")])
    try:
        spec = PipelineSpec.model_validate(dict(raw))
    except ValidationError as error:
        return Result(errors=_pydantic_problems(error, prefix))
    errors = _value_problems(spec)
    graph_errors, warnings = _graph_problems(spec)
    errors += graph_errors
    return Result(spec=None if errors else spec, errors=errors, warnings=warnings)


def validate_document(doc: Any) -> Result:
    """Validate a whole Pipeline object (apiVersion, kind, metadata, spec)."""
    if not isinstance(doc, Mapping):
        return Result(errors=[Problem("(document)", "must be a mapping")])
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(
            Problem("apiVersion", f"must be {API_VERSION} (got {doc.get('apiVersion')!r})")
        )
    if doc.get("kind") != KIND:
        errors.append(Problem("kind", f"must be {KIND} (got {doc.get('kind')!r})"))
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not is_dns1123_label(name):
        errors.append(
            Problem(
                "metadata.name", f"must be a DNS-1123 label of at most 63 characters (got {name!r})"
            )
        )
    result = validate_spec(doc.get("spec"))
    result.errors[:0] = errors
    if errors:
        result.spec = None
    return result
