"""Drift detection: does a live object still carry every field Penstock set?"""

from __future__ import annotations

from typing import Any

from penstock.api.types import parse_quantity


def _same_scalar(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    # The apiserver canonicalizes quantities ("0.5" -> "500m", 1 -> "1").
    if (
        isinstance(desired, str | int)
        and isinstance(live, str | int)
        and not isinstance(desired, bool)
    ):
        try:
            return parse_quantity(desired) == parse_quantity(live)
        except ValueError:
            return False
    return False


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of desired is present in live with an equal value.

    Fields the apiserver or other controllers add (defaults, status, clusterIP) are ignored;
    lists must match element by element, since Penstock owns the lists it sets.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(key in live and is_subset(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
    return _same_scalar(desired, live)


def drifted(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    meta = desired.get("metadata", {})
    live_meta = live.get("metadata", {})
    if not is_subset(meta.get("labels", {}), live_meta.get("labels", {})):
        return True
    live_owners = live_meta.get("ownerReferences", [])
    for owner in meta.get("ownerReferences", []):
        if not any(is_subset(owner, live_owner) for live_owner in live_owners):
            return True
    return any(
        not is_subset(value, live.get(key))
        for key, value in desired.items()
        if key not in ("metadata", "apiVersion", "kind")
    )
