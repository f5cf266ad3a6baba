"""What an upstream call produces for the callers that share it: an answer or a failure."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """A complete stage response held in memory.

    ``held_seconds`` is how long producing it held a stage replica (for one item of a batch:
    the batch's duration divided by its size), before being shared by coalesced callers.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    held_seconds: float = 0.0
    batch_size: int | None = None

    @property
    def content_type(self) -> str:
        return self.header("content-type") or "application/octet-stream"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass(frozen=True)
class Failure:
    """The gateway could not get an answer: a clear JSON error with an HTTP status.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header, for load shedding.
    """

    status: int
    message: str
    stage: str
    outcome: str
    held_seconds: float = 0.0
    batch_size: int | None = None
    retry_after: int | None = None

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "stage": self.stage}).encode()


@dataclass(frozen=True)
class Streamed:
    """The leader's response was streamed to its own client; others must call the stage."""


Outcome = Answer | Failure
