"""Hypothesis strategies shared by the unit and integration tests of strict JSON bodies."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


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
