"""The profile document: how one request went through the stages, per stage start and end.

The router writes it when a request carries ``X-Penstock-Profile: 1`` (the answer becomes
``{"output": ..., "profile": ...}``); ``penstock analyze`` reads it back. Both use the types
here: the router builds a :class:`Profile` and sends ``to_document()``, analyze calls
:func:`parse_profile`, which names the bad field of a malformed record (:class:`ProfileError`).

``critical_path`` is the *observed* one of this request (penstock.api.graph.waited_chain).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from penstock.contract.wire import PROFILE_HEADER
from penstock.errors import PenstockError, short_repr

MAX_STAGES = 1000
MAX_ATTEMPTS = 16


class ProfileError(PenstockError):
    """A malformed profile; the message names where and what."""


VARIANT_OUTCOMES = ("served", "low_confidence", "failed")


@dataclass(frozen=True)
class VariantAttempt:
    """One call of a stage variant: served (its answer was used), low_confidence (a cascade
    went on to the next), failed; with the confidence it reported, if any."""

    variant: str
    outcome: str
    duration_ms: float
    confidence: float | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "outcome": self.outcome,
            "duration_ms": round(self.duration_ms, 3),
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class StageTiming:
    name: str
    start_ms: float
    end_ms: float
    cache: str | None
    attempts: tuple[VariantAttempt, ...] = ()
    """A stage with variants: the variants called, in order (the last one answered)."""

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    @property
    def variant(self) -> str | None:
        """The variant whose answer was used (None: the stage has no variants, or all failed)."""
        last = self.attempts[-1] if self.attempts else None
        return last.variant if last and last.outcome == "served" else None


@dataclass(frozen=True)
class Profile:
    stages: dict[str, StageTiming]
    critical_path: tuple[str, ...]
    total_ms: float
    request: str | None = None  # the request body, canonical JSON, when known

    def to_document(self) -> dict[str, Any]:
        """The ``profile`` object of the router's answer (parse_profile reads it back)."""
        return {
            "stages": [_timing_document(timing) for timing in self.stages.values()],
            "critical_path": list(self.critical_path),
            "total_ms": self.total_ms,
        }


def _timing_document(timing: StageTiming) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": timing.name,
        "start_ms": timing.start_ms,
        "end_ms": timing.end_ms,
        "duration_ms": round(timing.duration_ms, 3),
        "cache": timing.cache,
    }
    if timing.attempts:
        document["variant"] = timing.variant
        document["attempts"] = [attempt.to_document() for attempt in timing.attempts]
    return document


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _name(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


def _timing(item: Any, where: str) -> StageTiming:
    if not isinstance(item, Mapping):
        raise ProfileError(f"{where} must be an object (got {short_repr(item)})")
    name, start, end = _name(item.get("name")), _number(item.get("start_ms")), _number(item.get("end_ms"))  # fmt: skip
    if name is None or start is None or end is None:
        raise ProfileError(f"{where} needs a name and finite numbers start_ms and end_ms")
    if end < start:
        raise ProfileError(f"{where} ({name}) ends before it starts")
    cache = item.get("cache")
    if cache is not None and not isinstance(cache, str):
        raise ProfileError(f"{where}.cache must be a string (got {short_repr(cache)})")
    raw_attempts = item.get("attempts") or []
    if not isinstance(raw_attempts, list) or len(raw_attempts) > MAX_ATTEMPTS:
        raise ProfileError(f"{where}.attempts must be a list of at most {MAX_ATTEMPTS} objects")
    attempts = tuple(
        _attempt(attempt, f"{where}.attempts[{index}]")
        for index, attempt in enumerate(raw_attempts)
    )
    return StageTiming(name, start, end, cache, attempts)


def _attempt(item: Any, where: str) -> VariantAttempt:
    if not isinstance(item, Mapping):
        raise ProfileError(f"{where} must be an object (got {short_repr(item)})")
    variant, outcome = _name(item.get("variant")), item.get("outcome")
    duration = _number(item.get("duration_ms"))
    if variant is None or outcome not in VARIANT_OUTCOMES or duration is None:
        raise ProfileError(
            f"{where} needs a variant, an outcome ({', '.join(VARIANT_OUTCOMES)}) and a finite"
            " duration_ms"
        )
    confidence = item.get("confidence")
    if confidence is not None:
        confidence = _number(confidence)
        if confidence is None or not 0 <= confidence <= 1:
            raise ProfileError(f"{where}.confidence must be a number in [0, 1] or null")
    return VariantAttempt(variant, outcome, duration, confidence)


def parse_profile(record: Any, where: str) -> Profile:
    if not isinstance(record, Mapping):
        raise ProfileError(f"{where}: expected a JSON object (got {short_repr(record)})")
    profile = record.get("profile", record)
    if not isinstance(profile, Mapping) or not isinstance(profile.get("stages"), list):
        raise ProfileError(
            f"{where}: no profile (send the request with {PROFILE_HEADER}: 1; a streamed"
            " output has none)"
        )
    if len(profile["stages"]) > MAX_STAGES:
        raise ProfileError(f"{where}: more than {MAX_STAGES} stages")
    stages: dict[str, StageTiming] = {}
    for index, item in enumerate(profile["stages"]):
        timing = _timing(item, f"{where}: profile.stages[{index}]")
        stages[timing.name] = timing
    path = profile.get("critical_path") or []
    if not isinstance(path, list) or not all(_name(name) for name in path):
        raise ProfileError(f"{where}: profile.critical_path must be a list of stage names")
    total = _number(profile.get("total_ms"))
    if total is None:
        total = max((timing.end_ms for timing in stages.values()), default=0.0)
    request = record.get("request") if "profile" in record else None
    canonical = None if request is None else json.dumps(request, sort_keys=True)
    return Profile(stages, tuple(path), total, canonical)
