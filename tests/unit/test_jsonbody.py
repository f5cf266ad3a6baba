"""Unit tests: strict JSON request bodies (dataplane/jsonbody.py), with hypothesis properties.

The property: any bytes give either the canonical text of the one JSON value they hold as
UTF-8 or a JsonBodyError, never another exception; a JSON value written in any encoding gives
the same canonical text as its UTF-8 writing, or an error.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from penstock.dataplane.gateway.cache import cache_key
from penstock.dataplane.jsonbody import MAX_DEPTH, JsonBodyError, canonical, loads, parse
from tests.json_bodies import json_values, utf8_json


def test_utf8_json_is_taken_and_canonical() -> None:
    value, text = parse(b' {"b": [1, 2.5, "\xc3\xa9"], "a": null}\n')
    assert value == {"a": None, "b": [1, 2.5, "é"]}
    assert text == '{"a":null,"b":[1,2.5,"é"]}'.encode()
    assert parse(b'{"a":null,"b":[1,2.5,"\\u00e9"]}')[1] == text


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_utf16_and_utf32_are_refused(encoding: str) -> None:
    body = '{"text": "hello"}'.encode(encoding)
    with pytest.raises(JsonBodyError, match="UTF-8"):
        parse(body)


def test_a_byte_order_mark_is_refused() -> None:
    with pytest.raises(JsonBodyError, match="byte order mark"):
        parse(b'\xef\xbb\xbf{"a": 1}')
    with pytest.raises(JsonBodyError, match="UTF-16 byte order mark"):
        parse('{"a": 1}'.encode("utf-16"))


@pytest.mark.parametrize(
    "body",
    [
        b"\xff",
        b'"\xc0\xaf"',  # overlong "/"
        b'"\xed\xa0\x80"',  # an encoded surrogate (CESU-8)
        b'"\xe9t\xe9"',  # latin-1
    ],
)
def test_bytes_that_are_not_utf8_are_refused(body: bytes) -> None:
    with pytest.raises(JsonBodyError, match="not UTF-8"):
        parse(body)


@pytest.mark.parametrize(
    "body", [b"NaN", b"[Infinity]", b'{"x": -Infinity}', b"[1e400]", b"-1e999", b"1" * 400 + b".0"]
)
def test_non_finite_numbers_are_refused(body: bytes) -> None:
    with pytest.raises(JsonBodyError, match=r"NaN|Infinity|range"):
        parse(body)


@pytest.mark.parametrize(
    "body", [b'"\\ud800"', b'["\\udc00"]', b'{"\\udfff": 1}', b'"\\ude00\\ud83d"', b'"a\\ud83d"']
)
def test_lone_surrogates_are_refused(body: bytes) -> None:
    with pytest.raises(JsonBodyError, match="lone surrogate"):
        parse(body)


def test_a_surrogate_pair_is_its_character() -> None:
    assert parse(b'"\\ud83d\\ude00"')[1] == '"😀"'.encode()


def test_nesting_is_bounded_without_recursion_errors() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    deeper = MAX_DEPTH + 1
    with pytest.raises(JsonBodyError, match="nested deeper"):
        parse(b"[" * deeper + b"]" * deeper)
    with pytest.raises(JsonBodyError, match="nested deeper"):
        parse(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    with pytest.raises(JsonBodyError, match="nested deeper"):
        parse(b"[" * 1_000_000)  # not even valid: still no RecursionError
    # brackets inside strings are text, not nesting
    assert parse(json.dumps({"t": "[" * 1000, "u": ["{" * 500]}).encode())[0]["t"] == "[" * 1000


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    with pytest.raises(JsonBodyError, match="key 'a' more than once"):
        parse(b'{"a": 1, "a": 2}')
    with pytest.raises(JsonBodyError, match="key 'k' more than once"):
        parse(b'[{"x": {"k": 1, "j": 2, "k": 1}}]')
    with pytest.raises(JsonBodyError, match="more than once"):
        parse(b'{"\\u0061": 1, "a": 2}')  # the same key, escaped


def test_errors_name_the_problem() -> None:
    with pytest.raises(JsonBodyError, match="not valid JSON: Expecting"):
        parse(b"{not json")
    with pytest.raises(JsonBodyError, match="NUL bytes"):
        parse('{"a": 1}'.encode("utf-16-le"))
    with pytest.raises(JsonBodyError, match="not valid JSON"):
        parse(b"")


def test_canonical_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(JsonBodyError):
        canonical(float("nan"))
    with pytest.raises(JsonBodyError):
        canonical({"a": "\udc80"})


# --------------------------------------------------------------------------- properties

JSON = json_values(magnitude=30, text=12, width=4, leaves=16)
ENCODINGS = [
    "utf-8",
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
    "latin-1",
    "cp1252",
]


def key_of(body: bytes) -> str:
    return cache_key(
        pipeline="p",
        stage="s",
        stage_image="i",
        model_version="",
        method="POST",
        path="/",
        body=parse(body)[1],
        headers={},
        key_headers=("accept", "authorization"),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=JSON,
    encoding=st.sampled_from(ENCODINGS),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
)
@example(value="Ã©", encoding="latin-1", ensure_ascii=False, indent=None)  # UTF-8 of "é"
@example(value={"a": "x"}, encoding="utf-16", ensure_ascii=True, indent=None)
def test_any_encoding_gives_the_utf8_key_or_an_error(
    value: Any, encoding: str, ensure_ascii: bool, indent: int | None
) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    utf8 = text.encode("utf-8")
    expected = key_of(utf8)  # the UTF-8 text is always taken
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        return  # not writable in that encoding
    read = utf8_json(body)
    try:
        got = key_of(body)
    except JsonBodyError:
        assert read is None  # refused only when it is not UTF-8 JSON
        return
    assert read is not None  # taken only as UTF-8: UTF-16/32 and BOMs never are
    # the same key exactly when it is the same text ("Ã©" in latin-1 is "é" in UTF-8)
    assert (got == expected) == (read == canonical(value))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
@example(b"[" * 2000)
@example(b'"\\ud800"')
@example(b"\x00")
@example(b'{"a":1,"a":1}')
def test_random_bytes_give_a_canonical_text_or_a_json_body_error(body: bytes) -> None:
    try:
        value, text = parse(body)
    except JsonBodyError:
        return
    assert text.decode("utf-8")  # canonical text is UTF-8
    assert parse(text) == (value, text)  # and a fixed point


@settings(max_examples=300, deadline=None)
@given(value=JSON, data=st.data())
def test_random_edits_of_json_text_never_escape_as_another_error(value: Any, data: Any) -> None:
    body = bytearray(json.dumps(value).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        if not body:
            break
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(JsonBodyError):
        parse(bytes(body))
