"""Conditions per the Kubernetes API conventions: lastTransitionTime moves only on a flip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from penstock.api.status import Condition, ConditionStatus, ConditionType


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """A condition as computed, before it meets the previous one (and its transition time)."""

    type: ConditionType
    status: bool | None
    reason: str
    message: str

    @property
    def status_text(self) -> ConditionStatus:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def set_conditions(
    previous: Sequence[Condition], verdicts: Sequence[Verdict], generation: int, now: str
) -> list[Condition]:
    """The conditions to write: one per verdict, in order; each keeps the previous
    lastTransitionTime of its type unless its status flipped (then it is `now`)."""
    before = {item.type: item for item in previous}
    written = []
    for verdict in verdicts:
        old = before.get(verdict.type)
        same = old is not None and old.status == verdict.status_text
        written.append(
            Condition(
                type=verdict.type,
                status=verdict.status_text,
                reason=verdict.reason,
                message=verdict.message,
                observed_generation=generation,
                last_transition_time=old.last_transition_time if same and old else now,
            )
        )
    return written


def find(conditions: Sequence[Condition], type_: ConditionType) -> Condition | None:
    return next((item for item in conditions if item.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: ConditionType) -> bool:
    found = find(conditions, type_)
    return found is not None and found.status == "True"
