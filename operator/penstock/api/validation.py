"""Validation beyond the schema, shared by the operator and the CLI.

Every problem names the field path and the bad value, so a user can fix it without reading code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from penstock.api import graph as stage_graph
from penstock.api.container import CONFIG_KEY, RESOURCE_NAME
from penstock.api.features import MANAGED_REDIS_COMPONENT
from penstock.api.metadata import metadata_problems, name_problem
from penstock.api.pipeline import RESERVED_STAGE_NAMES, PipelineSpec
from penstock.api.resources import resource_problems
from penstock.api.run import PipelineRunSpec
from penstock.api.types import API_VERSION, DECIMAL, KIND, LABEL_VALUE, SHA256, parse_quantity
from penstock.contract.wire import RESERVED_STAGE_PORTS
from penstock.errors import bounded, short_repr

MAX_PIPELINE_NAME = 63
MAX_PROBLEMS = 20  # per document; the rest are counted, not listed
_UNION_BRANCHES = {"int", "str", "float", "bool", "list", "dict", "none"}
# What a pattern means, for the messages (the pattern itself tells a user little).
_PATTERNS = {
    DECIMAL: 'a decimal number of 0 or more, e.g. "2.50" (up to 9 digits and 6 decimals)',
    SHA256: "64 lowercase hexadecimal digits",
    LABEL_VALUE: "a label value: letters, digits, '-', '_' or '.', starting and ending with a"
    " letter or digit",
    CONFIG_KEY: "a Secret or ConfigMap key: letters, digits, '-', '_' or '.'",
    RESOURCE_NAME: "a qualified name: [<domain>/]<name> with letters, digits, '-', '_' or '.'"
    " (e.g. cpu, hugepages-2Mi, nvidia.com/gpu)",
}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return bounded(f"{self.path}: {self.message}")


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


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS + 1
    return [*problems[: MAX_PROBLEMS - 1], Problem("(document)", f"and {more} more errors")]


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _UNION_BRANCHES or part.startswith(("function-", "union[", "json-or-")):
            continue  # the branch of a union (int, str, function-after[...]): not a field
        elif part == "[key]":
            text += " (key)"
        else:
            text += f".{part if len(part) <= 64 else short_repr(part, 64)}"
    return text


def _known_fields() -> set[str]:
    """Every wire (camelCase) field name of the spec's models."""
    names: set[str] = set()
    pending: list[Any] = [PipelineSpec]
    seen: set[Any] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            for arg in _model_args(info.annotation):
                pending.append(arg)
    return names


def _model_args(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_args(arg)]


_KNOWN_FIELDS = _known_fields()


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    field = loc[-1] if loc else ""
    if isinstance(field, str) and (camel := to_camel(field)) != field and camel in _KNOWN_FIELDS:
        return f"unknown field: fields are camelCase, did you mean {camel!r}?"
    return "unknown field"


def _pydantic_problems(error: ValidationError, prefix: str) -> list[Problem]:
    problems: dict[str, Problem] = {}
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = _path(loc, prefix)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            meaning = _PATTERNS.get(str((item.get("ctx") or {}).get("pattern")))
            message = f"must be {meaning}" if meaning else message
        if item["type"] == "extra_forbidden":
            message = _unknown_field(loc)
        elif item["type"] != "missing" and "(got " not in message:
            shown = short_repr(item.get("input"))
            if shown not in message:
                message += f" (got {shown})"
        # A union (int or quantity string) fails once per branch: keep the most specific message.
        if path not in problems or "quantity" in message:
            problems[path] = Problem(path, message)
    return list(problems.values())


def _graph_problems(spec: PipelineSpec) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    names = [stage.name for stage in spec.stages]
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in RESERVED_STAGE_NAMES:
            errors.append(Problem(f"spec.stages[{index}].name", RESERVED_STAGE_NAMES[name]))
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
    cycle = stage_graph.find_cycle(spec.graph)
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
    needed = spec.needed_stages()
    timeouts = {stage.name: stage.timeout_seconds for stage in spec.stages}
    for index, stage in enumerate(spec.stages):
        source = stage.dependencies[0] if stage.input == "stream" and stage.dependencies else None
        if source in timeouts and stage.timeout_seconds < timeouts[source]:
            warnings.append(
                Problem(
                    f"spec.stages[{index}].timeoutSeconds",
                    f"{stage.timeout_seconds} s is less than its source {source!r} may take"
                    f" ({timeouts[source]} s): a stage with input: stream reads while its"
                    " source produces, so its timeout must cover the source's too",
                )
            )
    for index, name in enumerate(names):
        if name not in needed:
            warnings.append(
                Problem(
                    f"spec.stages[{index}]",
                    f"the result of stage {name!r} is never used by the output "
                    f"{spec.output_stage!r}; the router will not call it (remove it: "
                    "the fastest operation is the one you skip)",
                )
            )
    return errors, warnings


def _value_problems(spec: PipelineSpec) -> list[Problem]:
    errors = [
        Problem(path, message)
        for path, message in resource_problems(
            spec.router.resources if spec.router else None, "spec.router.resources"
        )
    ]
    for index, stage in enumerate(spec.stages):
        where = f"spec.stages[{index}].resources"
        errors += [Problem(p, m) for p, m in resource_problems(stage.resources, where)]
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
        memory = stage.cache.memory if stage.cache else None
        errors += _semantic_problems(spec, index)
        if stage.name == MANAGED_REDIS_COMPONENT and any(
            other.cache and other.cache.shared and other.cache.shared.managed
            for other in spec.stages
        ):
            errors.append(
                Problem(
                    f"spec.stages[{index}].name",
                    f"{stage.name!r} is the name of the Redis the operator runs for a managed"
                    " shared tier (<pipeline>-cache): rename the stage",
                )
            )
        for tier in ("memory", "shared", "disk", "semantic"):
            if stage.cache and getattr(stage.cache, tier) and not stage.cache.enabled:
                errors.append(
                    Problem(
                        f"spec.stages[{index}].cache.{tier}",
                        f"{tier} needs enabled: true (the tiers are the stage's cache)",
                    )
                )
        if memory and not 1 << 20 <= parse_quantity(memory.max_size) <= 4 << 30:
            errors.append(
                Problem(
                    f"spec.stages[{index}].cache.memory.maxSize",
                    f"{memory.max_size!r} is not between 1Mi and 4Gi",
                )
            )
        shared = stage.cache.shared if stage.cache else None
        if shared and shared.managed and parse_quantity(shared.managed.max_memory) < 1 << 20:
            errors.append(
                Problem(
                    f"spec.stages[{index}].cache.shared.managed.maxMemory",
                    f"{shared.managed.max_memory!r} is below Redis' practical minimum of 1Mi",
                )
            )
        disk = stage.cache.disk if stage.cache else None
        if disk and not 16 << 20 <= parse_quantity(disk.size) <= 16 << 40:
            errors.append(
                Problem(
                    f"spec.stages[{index}].cache.disk.size",
                    f"{disk.size!r} is not between 16Mi and 16Ti",
                )
            )
        elif disk and not 1 <= parse_quantity(disk.max_entry_size) <= parse_quantity(disk.size):
            errors.append(
                Problem(
                    f"spec.stages[{index}].cache.disk.maxEntrySize",
                    f"{disk.max_entry_size!r} is not between 1 (byte) and size ({disk.size!r})",
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
        errors += _stream_input_problems(spec, index)
        errors += _variant_problems(spec, index)
        if stage.port in RESERVED_STAGE_PORTS:
            ports = ", ".join(map(str, sorted(RESERVED_STAGE_PORTS)))
            errors.append(
                Problem(
                    f"spec.stages[{index}].port",
                    f"{stage.port} is reserved for Penstock's sidecars ({ports})",
                )
            )
        names = [var.name for var in stage.env or []]
        errors += _duplicates(names, f"spec.stages[{index}].env", ".name", "variable")
    errors += _duplicates(spec.image_pull_secrets or [], "spec.imagePullSecrets", "", "Secret")
    return errors


def _stream_input_problems(spec: PipelineSpec, index: int) -> list[Problem]:
    """input: stream takes one stream: true dependency that no other stage needs whole."""
    stage = spec.stages[index]
    if stage.input != "stream":
        return []
    where = f"spec.stages[{index}].input"
    if stage.batching or stage.cache_enabled or len(stage.dependencies) != 1:
        return [
            Problem(
                where,
                "input: stream needs exactly one dependency and no cache or batching (the input"
                " is passed on as it arrives)",
            )
        ]
    source = next((s for s in spec.stages if s.name == stage.dependencies[0]), None)
    if source is None:
        return []  # the unknown dependency is reported on its own
    if not source.stream:
        return [Problem(where, f"its dependency {source.name!r} does not set stream: true")]
    others = [s.name for s in spec.stages if source.name in s.dependencies and s is not stage]
    if others or spec.output_stage == source.name:
        also = ", ".join(others) if others else "the pipeline's output"
        return [
            Problem(
                where,
                f"stage {source.name!r} streams into {stage.name!r}, so nothing else may take"
                f" its output (also taken by: {also})",
            )
        ]
    return []


def _variant_problems(spec: PipelineSpec, index: int) -> list[Problem]:
    """variants: unique names, object names that collide with no other stage's, a policy that
    can work; each variant's own fields as the stage's are checked."""
    stage = spec.stages[index]
    where = f"spec.stages[{index}]"
    if not stage.variants:
        if stage.variant_policy is not None:
            return [Problem(f"{where}.variantPolicy", "variantPolicy needs variants")]
        return []
    problems: list[Problem] = []
    names = [variant.name for variant in stage.variants]
    problems += _duplicates(names, f"{where}.variants", ".name", "variant")
    components = {
        workload.component: workload.stage.name
        for other in spec.stages
        if other is not stage
        for workload in other.workloads()
    }
    for number, variant in enumerate(stage.variants):
        at = f"{where}.variants[{number}]"
        component = f"{stage.name}-{variant.name}"
        if component in components:
            problems.append(
                Problem(
                    f"{at}.name",
                    f"its objects would be named like those of stage"
                    f" {components[component]!r} ({component}): rename the variant or the stage",
                )
            )
        problems += [
            Problem(p, m) for p, m in resource_problems(variant.resources, f"{at}.resources")
        ]
        scaling = variant.scaling
        if (
            scaling
            and scaling.max_replicas is not None
            and scaling.min_replicas > scaling.max_replicas
        ):
            problems.append(
                Problem(
                    f"{at}.scaling.minReplicas",
                    f"{scaling.min_replicas} is larger than maxReplicas {scaling.max_replicas}",
                )
            )
        env = [var.name for var in variant.env or []]
        problems += _duplicates(env, f"{at}.env", ".name", "variable")
    if stage.input == "stream":
        problems.append(
            Problem(
                f"{where}.variants",
                "a stage with input: stream has no variants (its streamed input cannot be sent"
                " twice)",
            )
        )
    policy = stage.policy
    if policy.type == "budget" and spec.latency_budget_ms is None:
        problems.append(
            Problem(
                f"{where}.variantPolicy.type",
                "budget picks a variant by the request's remaining latency budget: set"
                " spec.latencyBudgetMs",
            )
        )
    if policy.type == "weighted" and not any(variant.weight for variant in stage.variants):
        problems.append(
            Problem(f"{where}.variants", "variantPolicy weighted needs a variant with weight > 0")
        )
    embedders = [
        other.name
        for other in spec.stages
        if other.cache and other.cache.semantic and other.cache.semantic.embedder == stage.name
    ]
    if embedders:
        problems.append(
            Problem(
                f"{where}.variants",
                f"stage {stage.name!r} embeds for the semantic cache of {', '.join(embedders)}:"
                " an embedder has one workload, no variants (its vectors must be comparable)",
            )
        )
    return problems


def _semantic_problems(spec: PipelineSpec, index: int) -> list[Problem]:
    stage = spec.stages[index]
    semantic = stage.cache.semantic if stage.cache else None
    if semantic is None:
        return []
    if semantic.one_slot_threshold < semantic.threshold:
        return [
            Problem(
                f"spec.stages[{index}].cache.semantic.oneSlotThreshold",
                f"{semantic.one_slot_threshold} is below threshold {semantic.threshold}",
            )
        ]
    where = f"spec.stages[{index}].cache.semantic.embedder"
    name = semantic.embedder
    embedder = next((s for s in spec.stages if s.name == name), None)
    if name == stage.name:
        return [Problem(where, f"stage {name!r} cannot embed for its own semantic cache")]
    if embedder is None:
        names = ", ".join(s.name for s in spec.stages)
        return [Problem(where, f"no stage named {name!r} (stages: {names})")]
    if embedder.dependencies:
        return [
            Problem(
                where, f"stage {name!r} has dependsOn; an embedder is called with the text alone"
            )
        ]
    if embedder.cache and embedder.cache.semantic:
        return [Problem(where, f"stage {name!r} has a semantic cache itself")]
    return []


def _duplicates(values: list[str], where: str, field: str, what: str) -> list[Problem]:
    """The apiserver refuses a repeated entry of a list it keys (env by name, sets)."""
    seen: set[str] = set()
    problems = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append(
                Problem(f"{where}[{index}]{field}", f"{what} {value!r} is listed twice")
            )
        seen.add(value)
    return problems


def validate_spec(raw: Any, prefix: str = "spec") -> Result:
    """Validate a spec mapping: schema (pydantic) then graph and cross-field rules."""
    if not isinstance(raw, Mapping):
        return Result(errors=[Problem(prefix, f"must be a mapping (got {short_repr(raw)})")])
    try:
        spec = PipelineSpec.model_validate(dict(raw))
    except ValidationError as error:
        return Result(errors=_capped(_pydantic_problems(error, prefix)))
    errors = _value_problems(spec)
    graph_errors, warnings = _graph_problems(spec)
    errors += graph_errors
    return Result(spec=None if errors else spec, errors=_capped(errors), warnings=_capped(warnings))


def validate_document(doc: Any) -> Result:
    """Validate a whole Pipeline object (apiVersion, kind, metadata, spec)."""
    if not isinstance(doc, Mapping):
        return Result(errors=[Problem("(document)", f"must be a mapping (got {short_repr(doc)})")])
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(
            Problem(
                "apiVersion", f"must be {API_VERSION} (got {short_repr(doc.get('apiVersion'))})"
            )
        )
    if doc.get("kind") != KIND:
        errors.append(Problem("kind", f"must be {KIND} (got {short_repr(doc.get('kind'))})"))
    errors += [Problem(path, message) for path, message in metadata_problems(doc.get("metadata"))]
    unknown = sorted(str(key) for key in doc if key not in _TOP_LEVEL)
    if unknown:
        errors.append(Problem(short_repr(unknown[0], 64)[1:-1], "unknown field"))
    result = validate_spec(doc.get("spec"))
    result.errors = _capped([*errors, *result.errors])
    if errors:
        result.spec = None
    return result


_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}


def validate_run_spec(raw: Any) -> tuple[PipelineRunSpec | None, list[Problem]]:
    """A PipelineRun's spec, or the problems naming each bad field."""
    try:
        return PipelineRunSpec.model_validate(raw), []
    except ValidationError as error:
        return None, _capped(_pydantic_problems(error, "spec"))


def validate_run_document(doc: Mapping[str, Any]) -> tuple[PipelineRunSpec | None, list[Problem]]:
    """Validate a whole PipelineRun object (apiVersion, kind, metadata, spec)."""
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        got = short_repr(doc.get("apiVersion"))
        errors.append(Problem("apiVersion", f"must be {API_VERSION} (got {got})"))
    errors += [Problem(path, message) for path, message in metadata_problems(doc.get("metadata"))]
    unknown = sorted(str(key) for key in doc if key not in _TOP_LEVEL)
    if unknown:
        errors.append(Problem(short_repr(unknown[0], 64)[1:-1], "unknown field"))
    spec, problems = validate_run_spec(doc.get("spec"))
    errors = _capped([*errors, *problems])
    return (None if errors else spec), errors


def validate_object(body: Mapping[str, Any]) -> Result:
    """What the operator checks of a Pipeline from the apiserver: its name and its spec."""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    result = validate_spec(body.get("spec"))
    if (why := name_problem(name)) is not None:
        result.errors.insert(0, Problem("metadata.name", why))
        result.spec = None
    return result
