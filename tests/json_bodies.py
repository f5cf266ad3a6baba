"""What the unit and integration tests of strict JSON bodies share: a hypothesis strategy of
JSON values and the oracle of what a body means."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from penstock.dataplane.jsonbody import canonical


def json_values(*, magnitude: int, text: int, width: int, leaves: int) -> st.SearchStrategy[Any]:
    """Any JSON value: integers up to 10**magnitude, strings up to ``text`` characters,
    containers of up to ``width`` items, at most ``leaves`` scalars in all."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**magnitude), max_value=10**magnitude)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text),
        lambda children: (
            st.lists(children, max_size=width)
            | st.dictionaries(st.text(max_size=text // 2), children, max_size=width)
        ),
        max_leaves=leaves,
    )


def utf8_json(body: bytes) -> bytes | None:
    """The oracle: the canonical text of the body read as UTF-8 without a BOM by Python's own
    (lenient) JSON reader, or None."""
    if body.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        return canonical(json.loads(body.decode("utf-8")))
    except ValueError:  # UnicodeDecodeError and JsonBodyError are ValueErrors
        return None
