"""Every kind of bad input is rejected with a message naming the field path and the value."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.api.graph import find_cycle
from penstock.api.validation import validate_document, validate_spec

GOOD: dict[str, Any] = {
    "output": "generate",
    "stages": [
        {"name": "retrieve", "image": "r:1"},
        {"name": "embed", "image": "e:1"},
        {"name": "generate", "image": "g:1", "dependsOn": ["retrieve", "embed"]},
    ],
}


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    node: Any = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return spec


def test_good_spec_is_valid() -> None:
    result = validate_spec(GOOD)
    assert result.valid, result.errors
    assert result.warnings == []


@pytest.mark.parametrize(
    ("spec", "path", "needle"),
    [
        (_with(["stages", 0, "dependsOn"], ["generate"]), "spec.stages[", "cycle: "),
        (
            _with(["stages", 2, "dependsOn"], ["retrieve", "nope"]),
            "spec.stages[2].dependsOn[1]",
            "'nope'",
        ),
        (_with(["stages", 1, "dependsOn"], ["embed"]), "spec.stages[1].dependsOn[0]", "itself"),
        (_with(["output"], "missing"), "spec.output", "'missing'"),
        (_with(["stages", 0, "name"], "Retrieve_1"), "spec.stages[0].name", "'Retrieve_1'"),
        (
            _with(["stages", 0, "resources"], {"requests": {"cpu": "lots"}}),
            "spec.stages[0].resources.requests.cpu",
            "'lots'",
        ),
        (
            _with(["stages", 1, "model"], {"uri": "s3://m/x", "sha256": "abc"}),
            "spec.stages[1].model.sha256",
            "'abc'",
        ),
        (
            _with(["stages", 1, "model"], {"uri": "ftp://m/x"}),
            "spec.stages[1].model.uri",
            "'ftp://m/x'",
        ),
        (
            _with(["stages", 0, "scaling"], {"minReplicas": 5, "maxReplicas": 2}),
            "spec.stages[0].scaling.minReplicas",
            "maxReplicas 2",
        ),
        (
            _with(["stages", 0, "cache"], {"enabled": True, "ttlSeconds": 0}),
            "spec.stages[0].cache.ttlSeconds",
            "0",
        ),
        (
            _with(["stages", 0, "serviceAccountName"], "admin"),
            "spec.stages[0].serviceAccountName",
            "unknown field",
        ),
        (
            _with(["stages", 0, "securityContext"], {"privileged": True}),
            "spec.stages[0].securityContext",
            "unknown field",
        ),
        (
            _with(["stages", 1, "name"], "retrieve"),
            "spec.stages[1].name",
            "duplicate stage name 'retrieve'",
        ),
        (_with(["stages", 0, "port"], 70000), "spec.stages[0].port", "70000"),
        (_with(["stages", 0, "port"], 6379), "spec.stages[0].port", "6379"),
        (_with(["tracing"], {"samplingRatio": 2}), "spec.tracing.samplingRatio", "2"),
        (_with(["stages", 0, "name"], "router"), "spec.stages[0].name", "reserved"),
    ],
)
def test_bad_input_names_the_field_and_value(spec: dict[str, Any], path: str, needle: str) -> None:
    result = validate_spec(spec)
    assert not result.valid
    assert result.spec is None
    text = result.summary()
    assert path in text, text
    assert needle in text, text


def test_several_sinks_without_output_is_an_error() -> None:
    spec = copy.deepcopy(GOOD)
    del spec["output"]
    spec["stages"].append({"name": "audit", "image": "a:1", "dependsOn": ["retrieve"]})
    result = validate_spec(spec)
    assert "spec.output" in result.summary()
    assert "generate" in result.summary()
    assert "audit" in result.summary()


def test_single_sink_is_the_default_output() -> None:
    spec = copy.deepcopy(GOOD)
    del spec["output"]
    result = validate_spec(spec)
    assert result.spec is not None
    assert result.spec.output_stage == "generate"


def test_unconsumed_stage_is_a_warning_not_an_error() -> None:
    spec = copy.deepcopy(GOOD)
    spec["stages"].append({"name": "audit", "image": "a:1"})
    result = validate_spec(spec)
    assert result.valid
    assert [w.path for w in result.warnings] == ["spec.stages[3]"]
    assert "audit" in str(result.warnings[0])


def test_cycle_message_names_the_cycle() -> None:
    spec = {
        "stages": [
            {"name": "a", "image": "x", "dependsOn": ["c"]},
            {"name": "b", "image": "x", "dependsOn": ["a"]},
            {"name": "c", "image": "x", "dependsOn": ["b"]},
        ]
    }
    assert "a -> c -> b -> a" in validate_spec(spec).summary()


def test_document_checks_kind_and_name() -> None:
    result = validate_document(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "UP"}, "spec": GOOD}
    )
    text = result.summary()
    assert "apiVersion" in text
    assert "kind" in text
    assert "metadata.name" in text


def test_spec_must_be_a_mapping() -> None:
    assert "spec: must be a mapping" in validate_spec(["x"]).summary()


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    count = draw(st.integers(min_value=1, max_value=12))
    names = [f"s{i}" for i in range(count)]
    # Edges only from later to earlier stages: acyclic by construction.
    return {
        name: sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=i)) if i else [])
        for i, name in enumerate(names)
    }


@given(dags())
@settings(max_examples=150, deadline=None)
def test_acyclic_graphs_have_no_cycle(graph: dict[str, list[str]]) -> None:
    assert find_cycle(graph) is None


@given(dags(), st.data())
@settings(max_examples=150, deadline=None)
def test_a_back_edge_is_always_found(graph: dict[str, list[str]], data: st.DataObject) -> None:
    names = list(graph)
    if len(names) < 2:
        return
    low = data.draw(st.integers(0, len(names) - 2))
    high = data.draw(st.integers(low + 1, len(names) - 1))
    # Make a path high -> ... -> low exist, then close it with low -> high.
    graph[names[high]] = sorted({*graph[names[high]], names[low]})
    graph[names[low]] = sorted({*graph[names[low]], names[high]})
    cycle = find_cycle(graph)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    for node, dependency in itertools.pairwise(cycle):
        assert dependency in graph[node]


@given(dags())
@settings(max_examples=100, deadline=None)
def test_valid_dags_validate_with_an_explicit_output(graph: dict[str, list[str]]) -> None:
    stages = [{"name": name, "image": "img:1", "dependsOn": deps} for name, deps in graph.items()]
    last = list(graph)[-1]
    result = validate_spec({"stages": stages, "output": last})
    assert result.valid, result.summary()
    unused = {w.path for w in result.warnings}
    consumed_by_output = set()
    pending = [last]
    while pending:
        node = pending.pop()
        if node not in consumed_by_output:
            consumed_by_output.add(node)
            pending += graph[node]
    assert len(unused) == len(graph) - len(consumed_by_output)


def _streaming(**post: Any) -> dict[str, Any]:
    return {
        "output": "post",
        "stages": [
            {"name": "gen", "image": "x/gen:1", "stream": True},
            {"name": "post", "image": "x/post:1", "dependsOn": ["gen"], "input": "stream", **post},
        ],
    }


def test_input_stream_takes_one_streaming_source() -> None:
    result = validate_spec(_streaming(stream=True))
    assert result.spec is not None, result.errors
    assert result.spec.stages[1].input == "stream"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda s: s["stages"][0].update(stream=False), "its dependency 'gen' does not set stream"),
        (
            lambda s: s["stages"][1].update(cache={"enabled": True}),
            "exactly one dependency and no cache or batching",
        ),
        (
            lambda s: s["stages"][1].update(batching={"maxBatchSize": 4}),
            "exactly one dependency and no cache or batching",
        ),
        (
            lambda s: (
                s["stages"].append({"name": "other", "image": "x/o:1"}),
                s["stages"][1].update(dependsOn=["gen", "other"]),
            ),
            "exactly one dependency",
        ),
        (
            lambda s: s["stages"].append({"name": "also", "image": "x/a:1", "dependsOn": ["gen"]}),
            "nothing else may take its output (also taken by: also)",
        ),
        (lambda s: s["stages"][1].update(input="pipe"), "spec.stages[1].input"),
    ],
)
def test_input_stream_problems_name_the_field(change: Any, needle: str) -> None:
    spec = _streaming()
    change(spec)
    spec.setdefault("output", "post")
    result = validate_spec(spec)
    text = "; ".join(str(problem) for problem in result.errors)
    assert result.spec is None and needle in text, text


def test_a_stream_reader_shorter_than_its_source_is_warned() -> None:
    spec = _streaming(stream=True, timeoutSeconds=5)
    spec["stages"][0]["timeoutSeconds"] = 60
    result = validate_spec(spec)
    assert result.spec is not None
    assert any("timeoutSeconds" in problem.path for problem in result.warnings), result.warnings


# ----------------------------------------------------------------------------- variants

TWO_VARIANTS = [{"name": "light", "latencyMs": 40}, {"name": "heavy"}]


def _variants(**generate: Any) -> dict[str, Any]:
    """GOOD with its output stage, generate (stages[2]), served by a light and a heavy variant."""
    spec = copy.deepcopy(GOOD)
    spec["stages"][2].update({"variants": copy.deepcopy(TWO_VARIANTS), **generate})
    return spec


def _variant_errors(spec: dict[str, Any]) -> list[str]:
    result = validate_spec(spec)
    assert result.spec is None
    return [str(problem) for problem in result.errors]


@pytest.mark.parametrize(
    "policy",
    [
        None,
        {"type": "cascade", "minConfidence": 0.8},
        {"type": "weighted"},
        {"type": "budget", "reserveMs": 50},
    ],
)
def test_a_stage_may_have_variants_and_a_policy(policy: dict[str, Any] | None) -> None:
    spec = _variants(**({"variantPolicy": policy} if policy else {}))
    spec["latencyBudgetMs"] = 500
    result = validate_spec(spec)
    assert result.spec is not None, result.summary()
    generate = result.spec.stages[2]
    assert [variant.name for variant in generate.variants or []] == ["light", "heavy"]
    assert generate.policy.type == (policy or {}).get("type", "cascade")
    assert [w.component for w in result.spec.workloads()] == [
        "retrieve",
        "embed",
        "generate-light",
        "generate-heavy",
    ]


def _embedder_with_variants(spec: dict[str, Any]) -> None:
    spec["stages"][1]["variants"] = TWO_VARIANTS
    spec["stages"][2]["cache"] = {"enabled": True, "semantic": {"embedder": "embed"}}


@pytest.mark.parametrize(
    ("change", "path", "needle"),
    [
        (
            lambda s: s["stages"][2]["variants"][1].update(name="light"),
            "spec.stages[2].variants[1].name",
            "variant 'light' is listed twice",
        ),
        (
            lambda s: s["stages"].append({"name": "generate-light", "image": "x:1"}),
            "spec.stages[2].variants[0].name",
            "its objects would be named like those of stage 'generate-light' (generate-light)",
        ),
        (  # two variant stages whose <stage>-<variant> names meet
            lambda s: (
                s["stages"].append(
                    {"name": "generate-light-x", "image": "x:1", "variants": TWO_VARIANTS}
                )
                or s["stages"][2]["variants"][0].update(name="light-x-heavy")
            ),
            "spec.stages[2].variants[0].name",
            "like those of stage 'generate-light-x' (generate-light-x-heavy)",
        ),
        (
            lambda s: s["stages"][2]["variants"][0].update(resources={"requests": {"gpu": "1"}}),
            "spec.stages[2].variants[0].resources.requests.gpu",
            "'gpu' is not a container resource",
        ),
        (
            lambda s: s["stages"][2]["variants"][1].update(
                scaling={"minReplicas": 5, "maxReplicas": 2}
            ),
            "spec.stages[2].variants[1].scaling.minReplicas",
            "5 is larger than maxReplicas 2",
        ),
        (
            lambda s: s["stages"][2]["variants"][0].update(
                env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
            ),
            "spec.stages[2].variants[0].env[1].name",
            "variable 'A' is listed twice",
        ),
        (
            lambda s: s["stages"][2].update(variantPolicy={"type": "budget"}),
            "spec.stages[2].variantPolicy.type",
            "set spec.latencyBudgetMs",
        ),
        (
            lambda s: s["stages"][2].update(
                variantPolicy={"type": "weighted"},
                variants=[{"name": "a", "weight": 0}, {"name": "b", "weight": 0}],
            ),
            "spec.stages[2].variants",
            "variantPolicy weighted needs a variant with weight > 0",
        ),
        (
            lambda s: (
                s["stages"][2].pop("variants"),
                s["stages"][2].update(variantPolicy={"type": "cascade"}),
            ),
            "spec.stages[2].variantPolicy",
            "variantPolicy needs variants",
        ),
        (
            _embedder_with_variants,
            "spec.stages[1].variants",
            "stage 'embed' embeds for the semantic cache of generate: an embedder has one"
            " workload, no variants",
        ),
    ],
)
def test_variant_problems_name_the_field(change: Any, path: str, needle: str) -> None:
    spec = _variants()
    change(spec)
    errors = _variant_errors(spec)
    assert any(error.startswith(f"{path}: ") and needle in error for error in errors), errors


def test_a_stage_with_input_stream_has_no_variants() -> None:
    errors = _variant_errors(_streaming(variants=TWO_VARIANTS))
    assert (
        "spec.stages[1].variants: a stage with input: stream has no variants (its streamed"
        " input cannot be sent twice)"
    ) in errors


@pytest.mark.parametrize(
    ("change", "path", "needle"),
    [
        (lambda v: v.pop(), "spec.stages[2].variants", "at least 2 items"),
        (
            lambda v: v.extend({"name": f"v{n}"} for n in range(3)),
            "spec.stages[2].variants",
            "at most 4 items",
        ),
        (lambda v: v[0].update(name="Light"), "spec.stages[2].variants[0].name", "'Light'"),
        (lambda v: v[0].update(name="a" * 21), "spec.stages[2].variants[0].name", "at most 20"),
        (lambda v: v[1].update(weight=-1), "spec.stages[2].variants[1].weight", "-1"),
        (lambda v: v[1].update(latencyMs=0), "spec.stages[2].variants[1].latencyMs", "0"),
        (
            lambda v: v[0].update(dependsOn=["embed"]),
            "spec.stages[2].variants[0].dependsOn",
            "unknown field",
        ),
        (lambda v: v[0].pop("name"), "spec.stages[2].variants[0].name", "required"),
    ],
)
def test_the_schema_of_a_variant_names_the_field(change: Any, path: str, needle: str) -> None:
    spec = _variants()
    change(spec["stages"][2]["variants"])
    errors = _variant_errors(spec)
    assert any(error.startswith(f"{path}: ") and needle in error for error in errors), errors


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        ({"type": "random"}, "spec.stages[2].variantPolicy.type"),
        ({"minConfidence": 1.5}, "spec.stages[2].variantPolicy.minConfidence"),
        ({"reserveMs": -1}, "spec.stages[2].variantPolicy.reserveMs"),
    ],
)
def test_the_schema_of_a_variant_policy_names_the_field(policy: dict[str, Any], path: str) -> None:
    errors = _variant_errors(_variants(variantPolicy=policy))
    assert any(error.startswith(f"{path}: ") for error in errors), errors


# What the apiserver checks with a CEL rule of Stage, validate_spec checks too (the CLI and
# penstock dev see no apiserver): each variant rule's message -> a spec it refuses, and the field.
CEL_MIRRORS: dict[str, tuple[dict[str, Any], str]] = {
    "variant names must be unique in the stage": (
        _variants(variants=[{"name": "light"}, {"name": "light"}]),
        "spec.stages[2].variants[1].name",
    ),
    "a stage with input: stream has no variants (its streamed input cannot be sent twice)": (
        _streaming(variants=TWO_VARIANTS),
        "spec.stages[1].variants",
    ),
    "variantPolicy needs variants": (
        _with(["stages", 2, "variantPolicy"], {"type": "cascade"}),
        "spec.stages[2].variantPolicy",
    ),
    "variantPolicy weighted needs a variant with a weight above 0": (
        _variants(
            variants=[{"name": "a", "weight": 0}, {"name": "b", "weight": 0}],
            variantPolicy={"type": "weighted"},
        ),
        "spec.stages[2].variants",
    ),
}


def test_every_variant_cel_rule_is_checked_by_validation_too() -> None:
    from penstock.api.pipeline import Stage

    extra = Stage.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    rules = extra["x-kubernetes-validations"]
    assert isinstance(rules, list)
    messages = {
        str(rule["message"])  # type: ignore[index, call-overload]
        for rule in rules
        if "variant" in str(rule["rule"])  # type: ignore[index, call-overload]
    }
    assert messages == set(CEL_MIRRORS)
    for message, (spec, path) in CEL_MIRRORS.items():
        errors = _variant_errors(spec)
        assert any(error.startswith(f"{path}: ") for error in errors), (message, errors)
