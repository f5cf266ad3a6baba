"""The bounded YAML loader: hostile documents fail fast with one short message, never a traceback."""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penstock import safeyaml
from penstock.errors import MAX_MESSAGE
from penstock.safeyaml import DocumentError, load_yaml, load_yaml_file


def bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level holds ``width`` aliases of the one before (~1 KB)."""
    lines = ['l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        items = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{items}]")
    return "\n".join(lines) + "\n"


def error_of(text: str | bytes) -> str:
    with pytest.raises(DocumentError) as caught:
        load_yaml(text, "f.yaml")
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE
    assert "\n" not in message
    assert message.startswith("f.yaml")
    return message


def test_alias_bomb_is_refused_at_once_in_bounded_memory() -> None:
    text = bomb()
    assert len(text) < 1100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    message = error_of(text)
    assert time.monotonic() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert "values in one document (an alias counts as a copy)" in message
    assert "line " in message


def test_many_aliases_are_refused_and_a_few_are_fine() -> None:
    anchors = "base: &b {x: 1}\n"
    few = anchors + "".join(f"k{i}: *b\n" for i in range(safeyaml.MAX_ALIASES))
    assert len(load_yaml(few, "f.yaml")[0][1]) == safeyaml.MAX_ALIASES + 1
    many = anchors + "".join(f"k{i}: *b\n" for i in range(safeyaml.MAX_ALIASES + 1))
    assert f"more than {safeyaml.MAX_ALIASES} aliases" in error_of(many)


def test_merge_keys_work_and_may_be_overridden() -> None:
    text = "base: &b {image: a, port: 1}\nstage:\n  <<: *b\n  port: 2\n"
    assert load_yaml(text, "f")[0][1]["stage"] == {"image": "a", "port": 2}


def test_recursive_alias_is_refused() -> None:
    assert "refers to a node it is inside of" in error_of("a: &x [1, *x]\n")
    assert "refers to a node it is inside of" in error_of("a: &x {b: *x}\n")


@pytest.mark.parametrize(
    ("text", "key", "first", "line"),
    [
        ("a: 1\nb: 2\na: 3\n", "'a'", 1, 3),
        ("spec:\n  stages:\n    - name: x\n      image: a\n      image: b\n", "'image'", 4, 5),
        ("{x: 1, y: 2, x: 3}", "'x'", 1, 1),
        ("1: a\n01: b\n", "1", 1, 2),
        ("null: a\n~: b\n", "None", 1, 2),
    ],
)
def test_duplicate_keys_name_the_key_and_both_lines(
    text: str, key: str, first: int, line: int
) -> None:
    message = error_of(text)
    assert f"duplicate key {key} (first at line {first})" in message
    assert f"line {line}," in message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{a: " * 100_000,
        "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "leaf",
        "- " * 1000 + "x",
    ],
)
def test_deep_nesting_is_refused(text: str) -> None:
    assert f"nested deeper than {safeyaml.MAX_DEPTH} levels" in error_of(text)


def test_nesting_within_the_limit_is_fine() -> None:
    depth = safeyaml.MAX_DEPTH - 1
    value = load_yaml("[" * depth + "]" * depth, "f")[0][1]
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


def test_long_documents_and_large_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safeyaml, "MAX_DOCUMENT_CHARS", 1000)
    assert "longer than 1000 characters" in error_of("a: [" + "1, " * 500 + "]")
    assert load_yaml("a: [" + "1, " * 100 + "]\n---\n" + "b: " + "x" * 200, "f")
    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" * 100)
    with pytest.raises(DocumentError, match="larger than 100 bytes"):
        safeyaml.read_limited(str(path), limit=100)
    monkeypatch.setattr(safeyaml, "MAX_DOCUMENTS", 3)
    assert "more than 3 documents" in error_of("---\na: 1\n" * 4)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0x89 at offset 0)"),
        (b"a: \xff\xfe", "not UTF-8 text (byte 0xff at offset 3)"),
        (b"a: b\x00c", "line 1, column 5: invalid YAML: unacceptable character #x0000"),
        (b"a: 1\nb: \x07", "line 2, column 4"),
        (b"\x00" * 1000, "unacceptable character #x0000"),
    ],
)
def test_binary_input_is_one_clear_message(data: bytes, needle: str) -> None:
    assert needle in error_of(data)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: !!binary aGVsbG8=", "tag '!!binary' is not allowed"),
        ("a: !!set {x}", "tag '!!set' is not allowed"),
        ("a: !!omap [{x: 1}]", "tag '!!omap' is not allowed"),
        ("a: !!timestamp 2024-01-01", "tag '!!timestamp' is not allowed"),
        ("a: !!python/object:os.system ls", "is not allowed"),
        ("a: !custom x", "tag '!custom' is not allowed"),
        ("a: .nan", "'.nan' is not a JSON number"),
        ("a: -.inf", "is not a JSON number"),
        ("a: 1.0e+999999", "is not a JSON number"),
        ("a: 9223372036854775808", "integer out of range"),
        ("a: " + "9" * 5000, "integer out of range"),
        ("a: !!int ''", "cannot read '' as int"),
        ("a: !!int x", "cannot read 'x' as int"),
        ("a: !!float x", "cannot read 'x' as float"),
        ("a: !!bool maybe", "cannot read 'maybe' as bool"),
        ("a: *missing", "found undefined alias"),
        ("a: [1, 2", "line 1"),
        ("a:\n\t- b", "line 2, column 1"),
        ("? [a]\n: b", "unhashable key"),
    ],
)
def test_odd_scalars_and_tags_are_one_clear_message(text: str, needle: str) -> None:
    assert needle in error_of(text)


def test_only_json_types_come_out() -> None:
    ((_, body),) = load_yaml(
        "date: 2024-01-01\ntime: 2024-01-01T10:00:00Z\nint: 0x10\nyes: yes\nf: 1.5\nn: ~\n", "f"
    )
    assert body == {
        "date": "2024-01-01",
        "time": "2024-01-01T10:00:00Z",
        "int": 16,
        True: True,
        "f": 1.5,
        "n": None,
    }


def test_documents_keep_their_stream_index() -> None:
    assert load_yaml("a: 1\n---\n---\nb: 2\n", "f") == [(0, {"a": 1}), (2, {"b": 2})]


def test_errors_name_the_document(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\n---\nb: 1\nb: 2\n")
    with pytest.raises(DocumentError, match=r"p\.yaml#1: line 4, column 1: .*duplicate key 'b'"):
        load_yaml_file(str(path))
    with pytest.raises(DocumentError, match="cannot read"):
        load_yaml_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(DocumentError, match="cannot read"):
        load_yaml_file(str(tmp_path))


# ----------------------------------------------------------------- properties

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-15, abs_tol=0) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_plain_data_round_trips(value: Any) -> None:
    text = yaml.safe_dump(value)
    loaded = load_yaml(text, "f")
    if value is None:
        assert loaded == []
    else:
        assert _same(loaded[0][1], value)


YAMLISH = st.text(
    alphabet=st.sampled_from([*"ab01 :-[]{},&*!|>'\"#?%@`\n\t.~<=\\", "\x00", "é", "\ufeff"]),
    max_size=120,
)


@given(st.one_of(YAMLISH, st.text(max_size=80), st.binary(max_size=80)))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_input_gives_data_or_one_short_message(text: str | bytes) -> None:
    try:
        load_yaml(text, "f.yaml")
    except DocumentError as error:
        message = str(error)
        assert len(message) <= MAX_MESSAGE
        assert "\n" not in message
        assert message.startswith("f.yaml")
