"""Kubernetes quantities, property-tested against the apimachinery grammar with an exact oracle."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.api.validation import validate_spec
from penstock.quantity import (
    MAX_QUANTITY_LENGTH,
    NON_NEGATIVE_QUANTITY_PATTERN,
    QUANTITY_PATTERN,
    parse_non_negative_quantity,
    parse_quantity,
)

DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
LIMIT = 2**63 - 1

# --------------------------------------------------------------- the grammar, as a generator

digits = st.text(alphabet="0123456789", min_size=1, max_size=12)
number = st.one_of(
    digits,
    st.tuples(digits, digits).map(".".join),
    digits.map(lambda d: d + "."),
    digits.map(lambda d: "." + d),
)
sign = st.sampled_from(["", "+", "-"])
suffix = st.one_of(
    st.sampled_from(sorted(BINARY_SI)),
    st.sampled_from(sorted(DECIMAL_SI)),
    st.tuples(st.sampled_from("eE"), sign, st.text(alphabet="0123456789", min_size=1, max_size=3)).map("".join),
)  # fmt: skip
quantities = st.tuples(sign, number, suffix).map("".join)


def oracle(text: str) -> Fraction:
    """The exact value by the grammar, rounded up to 1n like the apiserver (no cap)."""
    match = re.fullmatch(r"([+-]?)([0-9.]+)(.*)", text)
    assert match is not None
    negative, num, tail = match.group(1) == "-", match.group(2), match.group(3)
    value = Fraction(Decimal(num if not num.endswith(".") else num + "0"))
    if tail in BINARY_SI:
        value *= 2 ** BINARY_SI[tail]
    elif tail in DECIMAL_SI:
        value *= Fraction(10) ** DECIMAL_SI[tail]
    else:
        value *= Fraction(10) ** int(tail[1:])
    nanos = value * 10**9
    rounded = Fraction(math.ceil(nanos), 10**9)  # away from zero for positives
    return -rounded if negative else rounded


@given(quantities)
@settings(max_examples=2000, deadline=None)
def test_every_quantity_of_the_grammar_parses_to_its_exact_value(text: str) -> None:
    expected = oracle(text)
    assert re.fullmatch(QUANTITY_PATTERN.strip("^$"), text)
    if abs(expected) > LIMIT:
        with pytest.raises(ValueError, match="too large"):
            parse_quantity(text)
    else:
        assert Fraction(parse_quantity(text)) == expected


@given(
    st.one_of(st.text(max_size=30), st.text(alphabet="0123456789.+-eEinumkKMGTPi ", max_size=12))
)
@settings(max_examples=3000, deadline=None)
def test_any_string_is_a_value_or_a_short_value_error(text: str) -> None:
    in_grammar = re.fullmatch(QUANTITY_PATTERN.strip("^$"), text) is not None
    value: Decimal | str
    try:
        value = parse_quantity(text)
    except ValueError as error:
        value = str(error)
    if isinstance(value, str):  # the message
        assert len(value) <= 120
        assert not in_grammar or "too large" in value or len(text) > MAX_QUANTITY_LENGTH
    else:
        assert in_grammar, f"{text!r} parsed to {value} but is not in the grammar"
        assert abs(value) <= LIMIT


@given(quantities)
@settings(max_examples=500, deadline=None)
def test_the_crd_pattern_agrees_with_the_api_check(text: str) -> None:
    """What the apiserver lets through (pattern) is what the operator accepts (unless huge)."""
    crd_ok = re.fullmatch(NON_NEGATIVE_QUANTITY_PATTERN.strip("^$"), text) is not None
    problem = ""
    try:
        parse_non_negative_quantity(text)
    except ValueError as error:
        problem = str(error)
    assert crd_ok == (not problem) or (crd_ok and "too large" in problem), problem


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Ei", 2**60),
        ("2E", 2 * 10**18),
        ("1E3", 1000),
        ("1e3", 1000),
        ("1e+3", 1000),
        ("1e-3", Fraction(1, 1000)),
        ("1.5Gi", 3 * 2**29),
        ("500m", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("5.", 5),
        ("+1", 1),
        ("-1", -1),
        ("0", 0),
        ("-0", 0),
        ("007", 7),
        ("0.1n", Fraction(1, 10**9)),
        ("-0.1n", Fraction(-1, 10**9)),
        ("1e-99999999", Fraction(1, 10**9)),
        ("7Ei", 7 * 2**60),
        ("9223372036854775807", LIMIT),
        ("1.", 1),
        (3, 3),
        (0, 0),
    ],
)
def test_known_values(text: Any, value: Fraction | int) -> None:
    assert Fraction(parse_quantity(text)) == value


@pytest.mark.parametrize(
    "text",
    ["", "+", "-", ".", " 1", "1 ", "1\n", "1.5.5", "0x10", "1K", "1mi", "1e", "e3", "1e1.5",
     "1E+", "--1", "1ee3", "1Mi3", "1k1", "∞", "\u0661", "1_000", "NaN", "Infinity"],
)  # fmt: skip
def test_not_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    "text", ["1e9999999", "1e19", "8Ei", "9223372036854775808", "10E", "1e10001", 2**63]
)
def test_huge_values_are_an_error_not_a_traceback(text: Any) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_quantity(text)


@pytest.mark.parametrize("value", [True, False, 0.5, None, [1], {"a": 1}, b"1"])
def test_other_types_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="use an integer or a string"):
        parse_quantity(value)


def test_overlong_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than"):
        parse_quantity("1" * (MAX_QUANTITY_LENGTH + 1))


# --------------------------------------------------------------- every quantity of the API

STAGE = {"name": "a", "image": "a:1"}
QUANTITY_FIELDS: list[tuple[dict[str, Any], str]] = [
    (
        {"stages": [{**STAGE, "resources": {"requests": {"cpu": "X"}}}]},
        "spec.stages[0].resources.requests.cpu",
    ),
    (
        {"stages": [{**STAGE, "resources": {"requests": {"nvidia.com/gpu": "X"}}}]},
        "spec.stages[0].resources.requests.nvidia.com/gpu",
    ),
    (
        {"stages": [{**STAGE, "resources": {"limits": {"memory": "X"}}}]},
        "spec.stages[0].resources.limits.memory",
    ),
    (
        {"stages": [{**STAGE, "model": {"uri": "s3://b/k", "sizeLimit": "X"}}]},
        "spec.stages[0].model.sizeLimit",
    ),
    ({"stages": [{**STAGE, "cache": {"maxMemory": "X"}}]}, "spec.stages[0].cache.maxMemory"),
    ({"stages": [{**STAGE, "cache": {"maxEntrySize": "X"}}]}, "spec.stages[0].cache.maxEntrySize"),
    (
        {"stages": [STAGE], "router": {"resources": {"requests": {"cpu": "X"}}}},
        "spec.router.resources.requests.cpu",
    ),
]


def _put(spec: Any, value: Any) -> Any:
    if spec == "X":
        return value
    if isinstance(spec, dict):
        return {k: _put(v, value) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_put(v, value) for v in spec]
    return spec


@pytest.mark.parametrize(("spec", "path"), QUANTITY_FIELDS)
@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("-1", "is negative"),
        ("-0", "is negative"),
        (-1, "is negative"),
        ("-500m", "is negative"),
        ("1e9999999", "too large"),
        ("lots", "not a Kubernetes quantity"),
        (True, "use an integer or a string"),
        (0.5, "use an integer or a string"),
    ],
)
def test_every_api_quantity_refuses_negative_huge_and_malformed_values(
    spec: dict[str, Any], path: str, value: Any, needle: str
) -> None:
    errors = validate_spec(_put(spec, value)).errors
    assert [p.path for p in errors] == [path], errors
    assert needle in errors[0].message


@pytest.mark.parametrize(("spec", "path"), QUANTITY_FIELDS)
@pytest.mark.parametrize("value", ["2Mi", "1Ei", "2E", "2e6", 4194304])
def test_every_api_quantity_takes_valid_values(spec: dict[str, Any], path: str, value: Any) -> None:
    assert validate_spec(_put(spec, value)).valid


def test_sizes_that_must_be_positive() -> None:
    for spec, path in QUANTITY_FIELDS[3:6]:
        errors = validate_spec(_put(spec, "0")).errors
        assert [p.path for p in errors] == [path], errors
