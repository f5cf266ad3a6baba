"""Token usage a stage reports with an answer (LLM stages), for cost per token.

Read from the ``X-Penstock-Usage`` header (penstock.contract.wire.USAGE_HEADER) or, when the
answer is JSON and names ``"usage"``, its top-level ``usage`` object. Anything else, or a value
that is not a whole number from 0 to 10^9, is no usage: a stage's mistake never fails a request.
The body is parsed only when it contains ``"usage"``: answers without it cost one byte scan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from penstock.contract.wire import USAGE_HEADER

_MAX_TOKENS = 10**9
_MAX_PARSED_BODY = 1024 * 1024
_HEADER = USAGE_HEADER.lower()
_INPUT = ("input_tokens", "gen_ai.usage.input_tokens", "prompt_tokens")
_OUTPUT = ("output_tokens", "gen_ai.usage.output_tokens", "completion_tokens")


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int


def _count(value: Any) -> int | None:
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit() or len(value) > 10:
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
        return None
    return value


def _usage(fields: dict[str, Any]) -> TokenUsage | None:
    counts = []
    for names in (_INPUT, _OUTPUT):
        found = next((fields[name] for name in names if name in fields), 0)
        count = _count(found)
        if count is None:
            return None
        counts.append(count)
    if not any(counts):
        return None
    return TokenUsage(counts[0], counts[1])


def from_header(value: str) -> TokenUsage | None:
    fields: dict[str, Any] = {}
    for part in value.split(",")[:8]:
        name, _, number = part.partition("=")
        fields[name.strip().lower()] = number
    return _usage(fields)


def token_usage(headers: Iterable[tuple[str, str]], body: bytes) -> TokenUsage | None:
    for name, value in headers:
        if name.lower() == _HEADER:
            return from_header(value)
    if len(body) > _MAX_PARSED_BODY or b'"usage"' not in body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    usage = document.get("usage") if isinstance(document, dict) else None
    return _usage(usage) if isinstance(usage, dict) else None
