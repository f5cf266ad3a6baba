"""Conditions per the Kubernetes API conventions: lastTransitionTime moves only on a flip."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    text = "Unknown" if status is None else ("True" if status else "False")
    result: dict[str, Any] = {"type": type_, "status": text, "reason": reason, "message": message}
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def merge_conditions(
    previous: list[dict[str, Any]], current: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Carry lastTransitionTime over from the previous condition of a type when status is equal."""
    before = {item.get("type"): item for item in previous}
    merged = []
    for item in current:
        old = before.get(item["type"])
        same = old is not None and old.get("status") == item["status"]
        stamp = old.get("lastTransitionTime") if same and old else None
        merged.append({**item, "lastTransitionTime": stamp or now})
    return merged


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((item for item in conditions if item.get("type") == type_), None)
