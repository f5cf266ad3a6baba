"""Checks of a Pipeline's ``metadata``, as the apiserver makes them (and a little stricter).

The name must be a DNS-1035 label (not only a DNS-1123 subdomain, as the apiserver allows for
custom resources): every child object's name starts with it, Services' too, and a Service name
must start with a letter. The namespace is a DNS-1123 label; labels and annotations are maps of
strings with qualified-name keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from penstock.api.types import LABEL_VALUE, is_dns1123_label
from penstock.errors import short_repr

MAX_ANNOTATIONS_BYTES = 256 * 1024
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1035_LABEL = re.compile(DNS1035_LABEL.strip("^$"))
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(LABEL_VALUE.strip("^$"))
_LABEL_RULE = (
    "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
)


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_SUBDOMAIN.fullmatch(value))


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a label or annotation key ([prefix/]name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return "its prefix (before '/') must be a DNS-1123 subdomain"
    if len(name) > 63 or not _NAME_PART.fullmatch(name):
        return f"its name (after any '/') must be {_LABEL_RULE}"
    return None


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1035_LABEL.fullmatch(value))


def _label(value: Any) -> str:
    return (
        "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a"
        f" letter or digit, at most 63 characters (got {short_repr(value)})"
    )


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a Pipeline, or None."""
    if isinstance(name, str) and is_dns1035_label(name):
        return None
    return (
        "must be a DNS-1035 label (it begins Service names): lowercase letters, digits and '-',"
        f" starting with a letter, ending with a letter or digit, at most 63 (got {short_repr(name)})"
    )


def _string_map(
    metadata: Mapping[str, Any], field: str, label_values: bool
) -> list[tuple[str, str]]:
    raw = metadata.get(field)
    if raw is None:
        return []
    where = f"metadata.{field}"
    if not isinstance(raw, Mapping):
        return [(where, f"must be a map of strings (got {short_repr(raw)})")]
    problems: list[tuple[str, str]] = []
    total = 0
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.append((where, f"key {short_repr(key)} must be a string"))
            continue
        at = f"{where}.{short_repr(key, 70)[1:-1]}"
        if (why := qualified_name_problem(key)) is not None:
            problems.append((at, f"invalid key: {why}"))
        if not isinstance(value, str):
            problems.append((at, f"must be a string (got {short_repr(value)}; quote it)"))
            continue
        total += len(key.encode()) + len(value.encode())
        if label_values and (len(value) > 63 or not _LABEL_VALUE.fullmatch(value)):
            problems.append((at, f"a label value is {_LABEL_RULE} (got {short_repr(value)})"))
        if len(problems) >= 8:
            break
    if not label_values and total > MAX_ANNOTATIONS_BYTES:
        problems.append((where, f"larger than {MAX_ANNOTATIONS_BYTES} bytes in all"))
    return problems


def metadata_problems(metadata: Any) -> list[tuple[str, str]]:
    """(field path, message) for everything wrong with ``metadata``."""
    if not isinstance(metadata, Mapping):
        return [("metadata", f"must be a mapping with a name (got {short_repr(metadata)})")]
    problems: list[tuple[str, str]] = []
    if (why := name_problem(metadata.get("name"))) is not None:
        problems.append(("metadata.name", why))
    namespace = metadata.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and is_dns1123_label(namespace)):
        problems.append(("metadata.namespace", _label(namespace)))
    for field in ("uid", "generateName", "resourceVersion"):
        if field in metadata and not isinstance(metadata[field], str):
            got = short_repr(metadata[field])
            problems.append((f"metadata.{field}", f"must be a string (got {got})"))
    problems += _string_map(metadata, "labels", label_values=True)
    problems += _string_map(metadata, "annotations", label_values=False)
    return problems
