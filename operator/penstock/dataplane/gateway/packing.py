"""Prompt packing (``batching.pack``): concurrent requests to an LLM stage become ONE call.

The batcher (batching.py) collects concurrent requests as for any batch; instead of a batch
path, the packer writes their prompts into one prompt (``template``, each prompt through
``itemTemplate``, numbered), sends it to the stage's own ``POST /`` in the first request's body
(only ``promptField`` replaced), and splits the generated text (``answerField`` of the answer)
back: a JSON array anywhere in the text, else a numbered list (``1. ...``, ``2) ...``). Each
caller gets the stage's answer with ``answerField`` set to its own part.

Requests are packed only with requests of the same caller (the same values of the cache's key
headers, Authorization among them: one caller's prompt can steer the whole packed answer, so it
must only ever share a call with its own) whose bodies are the same apart from the prompt (the
same model options); those headers go to the stage with the call. Every item whose part is missing or empty, whose body has no string prompt, that
would overflow ``maxPromptBytes``, or whose packed call failed, is sent alone with its own body:
a caller gets the answer a single call gives, never a neighbour's. The fallbacks are counted by
reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from penstock.dataplane.gateway.answers import Answer, Failure, Outcome

log = logging.getLogger("penstock.gateway.packing")

_JSON = (("Content-Type", "application/json"),)
_NUMBERED = re.compile(r"^\s*(?:\*\*)?(\d{1,4})(?:\*\*)?[.):](?:\*\*)?(?:\s+(.*))?$")

CallerHeaders = tuple[tuple[str, str], ...]
"""The caller's key headers (name, value), as sent to the stage."""
Call = Callable[[bytes, CallerHeaders], Awaitable[Outcome]]


@dataclass(frozen=True)
class PackItem:
    body: bytes
    identity: CallerHeaders = ()


@dataclass(frozen=True)
class PackSettings:
    prompt_field: str = "prompt"
    answer_field: str = "text"
    template: str = (
        "Answer each of the {count} numbered requests below on its own. Reply with a JSON"
        " array of {count} strings, the answers in order, and nothing else.\n\n{items}"
    )
    item_template: str = "{number}. {prompt}"
    max_prompt_bytes: int = 16384


def build_prompt(prompts: Sequence[str], settings: PackSettings) -> tuple[str, int]:
    """The packed prompt of the first prompts that fit ``max_prompt_bytes``, and how many."""
    lines: list[str] = []
    for number, prompt in enumerate(prompts, 1):
        line = settings.item_template.replace("{number}", str(number)).replace("{prompt}", prompt)
        candidate = _fill(settings.template, len(lines) + 1, [*lines, line])
        if len(candidate.encode()) > settings.max_prompt_bytes and lines:
            break
        lines.append(line)
    return _fill(settings.template, len(lines), lines), len(lines)


def _fill(template: str, count: int, lines: list[str]) -> str:
    return template.replace("{count}", str(count)).replace("{items}", "\n".join(lines))


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def _array(text: str, count: int) -> list[str | None] | None:
    """The parts when the answer is a JSON array of exactly ``count`` items (prose around it
    allowed, but no numbered line before it); [] when an array is there but unusable; None when
    there is no array."""
    start, end = text.find("["), text.rfind("]")
    if not 0 <= start < end:
        return None
    if any(_NUMBERED.match(line) for line in text[:start].splitlines()):
        return None  # a numbered list whose items hold brackets
    try:
        items = json.loads(text[start : end + 1])
    except (ValueError, RecursionError):
        return None
    if not isinstance(items, list):
        return None
    if len(items) != count:  # which item is whose is not known: none is taken
        return []
    return [_as_text(item) for item in items]


def split_answer(text: str, count: int) -> list[str | None]:
    """Part i of a packed answer for each of ``count`` items (None: missing, empty or not known
    for certain). A JSON array must have exactly ``count`` items; a numbered list is read
    otherwise, and a number seen twice or out of range leaves that part unknown."""
    parts = _array(text, count)
    if parts is not None:
        return parts or [None] * count
    found: dict[int, list[str]] = {}
    doubtful: set[int] = set()  # numbered twice: which one is the answer is not known
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match:
            number = int(match.group(1))
            if number in found or not 1 <= number <= count:
                doubtful.add(number)
                current = None
            else:
                current = found[number] = [match.group(2) or ""]
        elif current is not None and line.strip():
            current.append(line.strip())
    return [
        None if n in doubtful or n not in found else (" ".join(found[n]).strip() or None)
        for n in range(1, count + 1)
    ]


@dataclass
class _Item:
    index: int
    body: bytes
    identity: CallerHeaders
    document: dict[str, Any] | None  # the parsed body when it can be packed
    prompt: str | None


def _parse(index: int, item: PackItem | bytes, field: str) -> _Item:
    body, identity = (item, ()) if isinstance(item, bytes) else (item.body, item.identity)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return _Item(index, body, identity, None, None)
    if not isinstance(document, dict) or not isinstance(document.get(field), str):
        return _Item(index, body, identity, None, None)
    return _Item(index, body, identity, document, document[field])


def _group_key(item: _Item, field: str) -> str:
    """What must be the same for two requests to share a call: the caller and the body minus
    the prompt."""
    assert item.document is not None
    rest = {key: value for key, value in item.document.items() if key != field}
    return json.dumps([item.identity, rest], sort_keys=True, separators=(",", ":"))


class Packer:
    """The batcher's sender for packed prompts: items in, one outcome per item out."""

    def __init__(
        self,
        call: Call,
        settings: PackSettings,
        *,
        stage: str,
        on_pack: Callable[[int], None] | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._call = call
        self.settings = settings
        self._stage = stage
        self._on_pack = on_pack or (lambda _count: None)
        self._on_fallback = on_fallback or (lambda _reason: None)

    async def send(self, batch: Sequence[PackItem | bytes]) -> list[Outcome]:
        field = self.settings.prompt_field
        items = [_parse(index, item, field) for index, item in enumerate(batch)]
        outcomes: list[Outcome | None] = [None] * len(items)
        groups: dict[str, list[_Item]] = {}
        alone: list[tuple[_Item, str]] = []
        for item in items:
            if item.document is None:
                alone.append((item, "not_packable"))
            elif not any(name != "accept" for name, _ in item.identity):
                # No credential or tenant header: callers cannot be told apart, so no prompt
                # may share a call (behind the router, stages see no Authorization).
                alone.append((item, "anonymous"))
            else:
                groups.setdefault(_group_key(item, field), []).append(item)
        work = [self._pack_safely(group, outcomes, alone) for group in groups.values()]
        await asyncio.gather(*work)
        await asyncio.gather(*(self._single(item, reason, outcomes) for item, reason in alone))
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _pack_safely(
        self, group: list[_Item], outcomes: list[Outcome | None], alone: list[tuple[_Item, str]]
    ) -> None:
        """A group's packed call; a bug in it sends that group's items alone, no one else's."""
        try:
            await self._pack(group, outcomes, alone)
        except Exception:
            log.exception("stage %s: packing failed; its items go alone", self._stage)
            for item in group:
                outcomes[item.index] = None
                if all(queued is not item for queued, _ in alone):
                    alone.append((item, "error"))

    async def _pack(
        self, group: list[_Item], outcomes: list[Outcome | None], alone: list[tuple[_Item, str]]
    ) -> None:
        if len(group) == 1:  # nothing to pack with: its own call, as it came
            alone.append((group[0], "alone"))
            return
        prompts = [item.prompt or "" for item in group]
        prompt, fitted = build_prompt(prompts, self.settings)
        alone.extend((item, "too_large") for item in group[fitted:])
        group = group[:fitted]
        if len(group) == 1:
            alone.append((group[0], "alone"))
            return
        first = group[0].document
        assert first is not None
        body = json.dumps({**first, self.settings.prompt_field: prompt}).encode()
        started = time.perf_counter()
        result = await self._call(body, group[0].identity)
        held = (time.perf_counter() - started) / len(group)
        self._on_pack(len(group))
        if _overloaded(result):  # asking each alone would multiply the load: each gets it
            for item in group:
                outcomes[item.index] = _per_item(result, self._stage)
            return
        answer = self._answer_document(result)
        if answer is None or not isinstance(result, Answer):
            alone.extend((item, "error") for item in group)
            return
        # The stage's sharing rules (Cache-Control, Vary) hold for every part; the call's token
        # usage belongs to no single part (the call's own metrics counted it once).
        kept = tuple(
            (name, value) for name, value in result.headers if name.lower() in _SHARING_HEADERS
        )
        answer.pop("usage", None)
        parts = split_answer(str(answer[self.settings.answer_field]), len(group))
        for item, part in zip(group, parts, strict=True):
            if part is None:
                alone.append((item, "missing"))
                continue
            text = json.dumps({**answer, self.settings.answer_field: part})
            outcomes[item.index] = Answer(
                200, (*_JSON, *kept), text.encode(), held_seconds=held, batch_size=len(group)
            )

    def _answer_document(self, result: Outcome) -> dict[str, Any] | None:
        if not isinstance(result, Answer) or not 200 <= result.status <= 299:
            return None
        try:
            document = json.loads(result.body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict) or not isinstance(
            document.get(self.settings.answer_field), str
        ):
            return None
        return document

    async def _single(self, item: _Item, reason: str, outcomes: list[Outcome | None]) -> None:
        if reason not in ("alone", "anonymous"):
            self._on_fallback(reason)
        # Its own call, not a batch's share: no batching saving is counted for it.
        outcomes[item.index] = await self._call(item.body, item.identity)


_SHARING_HEADERS = frozenset({"cache-control", "vary", "expires", "pragma"})
_OVERLOADED = frozenset({429, 503, 504})


def _overloaded(result: Outcome) -> bool:
    return result.status in _OVERLOADED


def _per_item(result: Outcome, stage: str) -> Outcome:
    if isinstance(result, Failure):
        return result
    message = f"stage {stage!r} answered HTTP {result.status} to a packed call"
    return Failure(result.status, message, stage, "upstream_error", result.held_seconds)
