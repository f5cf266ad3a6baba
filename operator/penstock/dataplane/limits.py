"""The bounds of a gateway's or router's listener, their flags, and who answers when one
is hit (the server named in its JSON error answers). Enforced by dataplane/connections."""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

_FDS_PER_CONNECTION = 2  # a client connection and, in flight, one to a stage
_FDS_SPARE = 256


class BodyTimeout(ConnectionError):
    """The request body did not arrive within the body timeout."""


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts (seconds) and the connection bound of one listener."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 1024


_DEFAULTS = ServerLimits()

# The flags both commands take for their listeners: flag -> (field, help).
LIMIT_FLAGS: dict[str, tuple[str, str]] = {
    "--header-timeout-seconds": (
        "header_timeout",
        "a request head must arrive within N s of the connection (or of its first byte on a"
        f" kept-alive one), else 408 and close (default {_DEFAULTS.header_timeout:g})",
    ),
    "--body-timeout-seconds": (
        "body_timeout",
        "a request body must arrive within N s of its head, else 408 and close"
        f" (default {_DEFAULTS.body_timeout:g})",
    ),
    "--idle-timeout-seconds": (
        "idle_timeout",
        "a kept-alive connection without a request, or one whose client stopped reading the"
        f" answer, is closed after N s (default {_DEFAULTS.idle_timeout:g})",
    ),
    "--max-connections": (
        "max_connections",
        "open connections on the serving port (the admin port: at most 64); a new one beyond"
        " takes the place of the oldest one without a request in progress, or gets 503 when all"
        f" are busy (default {_DEFAULTS.max_connections})",
    ),
}


def parse_limit(flag: str, text: str) -> float | int:
    """A value of one of :data:`LIMIT_FLAGS`; ``ValueError`` saying what is wrong."""
    if flag == "--max-connections":
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if count < 1:
            raise ValueError(f"{count} is not a positive integer")
        return count
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 < seconds <= 86_400:  # also false for nan
        raise ValueError(f"{text!r} is not in (0, 86400]")
    return seconds


@dataclass(frozen=True)
class Identity:
    """Who answers, for error bodies: ``{"error": "<describe>: ...", **fields}``."""

    describe: str = "server"
    fields: Mapping[str, str] = field(default_factory=dict)

    def body(self, message: str) -> bytes:
        return json.dumps({"error": f"{self.describe}: {message}", **self.fields}).encode()

    def raw(self, status: int, message: str, extra: str = "") -> bytes:
        """A whole HTTP/1.1 answer that closes the connection (written on a bare socket)."""
        body = self.body(message)
        return (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        ).encode() + body


def open_files_allow(connections: int) -> int:
    """How many connections the open-files limit allows: the soft limit is raised towards the
    hard one first when it is too low (as the Go runtime does)."""
    needed = connections * _FDS_PER_CONNECTION + _FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return connections
    return max(16, (soft - _FDS_SPARE) // _FDS_PER_CONNECTION)
