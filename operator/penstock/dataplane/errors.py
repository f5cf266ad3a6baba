"""The data plane's error answers: JSON ``{"error": ..., <who answered>...}``, never text."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web


class StageError(Exception):
    """A stage failed or ran out of time; ``status`` is the router's HTTP answer (502/504)."""

    def __init__(self, stage: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.status = status


def json_error(
    status: int,
    message: str,
    identity: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``{"error": message, **identity}`` with ``status``; identity names who answered
    (``{"pipeline": ...}`` for the router, plus ``"stage"`` when a stage is to blame)."""
    return web.json_response({"error": message, **identity}, status=status, headers=headers)
