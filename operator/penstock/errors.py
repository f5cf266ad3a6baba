"""The base of every error a user can fix, and helpers that keep their messages short.

A user-facing message names where the problem is (file, document, field) and what is wrong, in
one line of at most :data:`MAX_MESSAGE` characters: a hostile input must never turn an error
into a megabyte of text (or a traceback).
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_MESSAGE = 400
MAX_VALUE_REPR = 80


class PenstockError(Exception):
    """An error caused by input a user can fix; its message is printed as is."""


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, cut to ``limit`` characters (with an ellipsis when cut)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def short_repr(value: Any, limit: int = MAX_VALUE_REPR) -> str:
    """A repr of ``value`` that never walks a whole large structure, cut to ``limit``."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a hostile __repr__ cannot break an error message
        text = f"<{type(value).__name__}>"
    return bounded(text, limit)
