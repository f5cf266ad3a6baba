"""Strict JSON request bodies, shared by the gateway and the router: one JSON text, one meaning.

A body is taken only if it is one JSON text as RFC 8259 defines it for interchange:

- **UTF-8 only** (RFC 8259 section 8.1), decoded strictly: no byte order mark, no UTF-16 or
  UTF-32 (Python's ``json.loads(bytes)`` would guess those), no invalid or overlong sequences,
  no encoded surrogates.
- **No NaN, Infinity or -Infinity**, and no number too large for a double (``1e400`` would read
  as infinity): they are not JSON, and two different texts would read as the same value.
- **No lone surrogates** in ``\\u`` escapes (``"\\ud800"``): no UTF-8 text can hold them.
- **Nesting at most** :data:`MAX_DEPTH` arrays/objects deep (a deep text would otherwise end
  in a ``RecursionError``).
- **Duplicate object keys are refused.** Parsers disagree on them (first wins, last wins, error),
  and the gateway keys the cache on what it parsed while the stage reads the bytes itself: a
  text with ``{"a": 1, "a": 2}`` could be answered for ``a = 1`` and stored under the key of
  ``{"a": 2}``. Refusing them is the only policy with a single meaning.

Numbers are compared as Python reads them (integers exactly, others as IEEE-754 doubles): two
texts whose numbers are the same double, such as ``0.1`` and ``0.10``, are the same value. A
stage that needs decimals beyond double precision should take them as strings.

Every refusal is a :class:`JsonBodyError` whose message names the problem and reads after
"request body " (for a 400: "request body is not UTF-8 ...").
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

MAX_DEPTH = 128
"""Deepest nesting of arrays and objects in a request body."""

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF8, "UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
# A JSON string (valid or not, the parser decides) and an opening or closing bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JsonBodyError(ValueError):
    """The body is not one strict JSON text; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise JsonBodyError(
        f"holds {name}, which is not a JSON number (RFC 8259 allows finite numbers only)"
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise JsonBodyError(f"has the key {name!r} more than once in an object")
            seen.add(name)
    return value


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings (only run on texts with many brackets)."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _not_utf8(body: bytes, error: UnicodeDecodeError) -> JsonBodyError:
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return JsonBodyError(
                f"starts with a {encoding} byte order mark; JSON must be UTF-8 (RFC 8259)"
            )
    snippet = body[error.start : error.start + 4].hex(" ")
    return JsonBodyError(
        f"is not UTF-8 (bytes {snippet} at offset {error.start}); JSON must be UTF-8 (RFC 8259)"
    )


def loads(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``body``, or :class:`JsonBodyError`.

    Checks everything except non-finite numbers and lone surrogates, which :func:`canonical`
    finds for free while it encodes (use :func:`parse` for both).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(body, error) from None
    if text.startswith("\ufeff"):
        raise JsonBodyError("starts with a byte order mark; JSON must be UTF-8 without one")
    if text.count("[") + text.count("{") > max_depth and _depth(text) > max_depth:
        raise JsonBodyError(f"is nested deeper than {max_depth} arrays/objects")
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except JsonBodyError:
        raise
    except RecursionError:
        raise JsonBodyError(f"is nested deeper than {max_depth} arrays/objects") from None
    except ValueError as error:
        hint = ""
        if "\x00" in text:
            hint = " (it holds NUL bytes: UTF-16 or UTF-32? JSON must be UTF-8)"
        raise JsonBodyError(f"is not valid JSON: {error}{hint}") from None


def canonical(value: Any) -> bytes:
    """One UTF-8 text per JSON value: sorted keys, no insignificant whitespace.

    Raises :class:`JsonBodyError` for what no JSON text can hold: non-finite numbers (such as
    ``1e400`` read as infinity) and lone surrogates.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = error.object[error.start : error.end]
        escapes = "".join(f"\\u{ord(char):04x}" for char in bad)
        raise JsonBodyError(f"holds the lone surrogate {escapes}: it is not Unicode text") from None
    except ValueError:
        raise JsonBodyError(
            "holds a number out of the range of a double (it would read as infinity)"
        ) from None


def parse(body: bytes, *, max_depth: int = MAX_DEPTH) -> tuple[Any, bytes]:
    """The value of ``body`` and its canonical UTF-8 text, or :class:`JsonBodyError`."""
    value = loads(body, max_depth=max_depth)
    return value, canonical(value)
