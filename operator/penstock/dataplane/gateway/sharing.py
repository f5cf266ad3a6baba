"""When one caller's answer may reach another: the rules of the cache and of coalescing.

The gateway is a shared cache (RFC 9111): an answer reaches a caller other than the one it was
made for only when it is **shareable**, under the same key material, with ``Vary`` honoured.
Coalescing follows exactly the rules of the cache: sharing an in-flight answer is serving it
from a cache that is zero seconds old.

Request side (:func:`request_rules`):

- ``Cache-Control: no-cache`` (or ``Pragma: no-cache``, or ``max-age=0``): not answered from the
  cache, and not joined to another caller's in-flight call; the stage is called.
- ``Cache-Control: no-store``: the answer is not stored, and not shared with anyone.

Answer side (:func:`answer_sharing`): never shared or stored when it has ``Cache-Control``
``private``, ``no-store`` or ``no-cache`` (with or without field names), ``max-age=0`` or
``s-maxage=0``, a ``Set-Cookie`` header, or ``Vary: *`` (or a ``Vary`` naming more than
:data:`MAX_VARY` headers, or something that is not a header name). ``Vary: a, b`` means: only
for callers whose ``a`` and ``b`` request headers (all their values, in order, byte for byte)
are those of the caller it was made for. ``s-maxage``, else ``max-age``, caps the cache TTL.

Credentials: a request with ``Authorization`` or ``Cookie`` that is not part of the key (not a
key header and not named by the answer's ``Vary``) gets an answer that is shared or stored only
when the stage marks it ``Cache-Control: public`` or gives it ``s-maxage`` (RFC 9111 section
3.5; ``must-revalidate``, which the RFC also accepts, is not enough here: the gateway never
revalidates). Answers to batched items are exempt: the batch call sends the stage no request
headers, so they depend on the body alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CREDENTIALS = ("authorization", "cookie")
MAX_VARY = 16
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_NEVER_SHARED = frozenset({"private", "no-store", "no-cache"})


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of the header ``name`` (lower case), in order: what a key covers."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: list[str] = getall(name, [])
        return values
    return [value for key, value in headers.items() if key.lower() == name]


_all = header_values


def cache_directives(headers: Mapping[str, str]) -> set[str]:
    """Lower-case ``Cache-Control`` directive names (``Pragma: no-cache`` counts as no-cache)."""
    directives = set(parse_cache_control(_all(headers, "cache-control")))
    if any("no-cache" in value.lower() for value in _all(headers, "pragma")):
        directives.add("no-cache")
    return directives


def parse_cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """Lower-case directive names and their (unquoted) values from Cache-Control values."""
    directives: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, sep, argument = part.partition("=")
            name = name.strip().lower()
            if name:
                directives[name] = argument.strip().strip('"') if sep else None
    return directives


def _zero(directives: Mapping[str, str | None], name: str) -> bool:
    return name in directives and (directives[name] or "").strip() == "0"


@dataclass(frozen=True)
class RequestRules:
    """What the request allows: answered from the cache, joined to an in-flight call, stored."""

    lookup: bool = True
    join: bool = True
    store: bool = True


ALL_ALLOWED = RequestRules()


def request_rules(headers: Mapping[str, str]) -> RequestRules:
    cache_control = _all(headers, "cache-control")
    pragma = _all(headers, "pragma")
    if not cache_control and not pragma:
        return ALL_ALLOWED  # the common case, without parsing
    directives = parse_cache_control(cache_control)
    fresh = (
        "no-cache" in directives
        or _zero(directives, "max-age")
        or any("no-cache" in value.lower() for value in pragma)
    )
    no_store = "no-store" in directives
    return RequestRules(lookup=not fresh, join=not fresh and not no_store, store=not no_store)


@dataclass(frozen=True)
class Sharing:
    """What an answer's own headers say about sharing it."""

    shareable: bool
    vary: tuple[str, ...] = ()
    public: bool = False
    ttl_seconds: int | None = None
    reason: str = ""


NOTHING_SAID = Sharing(True)


def _vary(values: list[str]) -> tuple[str, ...] | str:
    names: set[str] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name == "*":
                return "Vary: *"
            if not _TOKEN.match(name):
                return f"Vary names {name!r}, not a header name"
            names.add(name)
    if len(names) > MAX_VARY:
        return f"Vary names {len(names)} headers (at most {MAX_VARY} are keyed)"
    return tuple(sorted(names))


def answer_sharing(headers: Iterable[tuple[str, str]]) -> Sharing:
    cache_control: list[str] = []
    vary: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "set-cookie":
            return Sharing(False, reason="the answer sets a cookie")
        if lowered == "cache-control":
            cache_control.append(value)
        elif lowered == "vary":
            vary.append(value)
    if not cache_control and not vary:
        return NOTHING_SAID
    directives = parse_cache_control(cache_control)
    refused = sorted(_NEVER_SHARED & directives.keys())
    if refused:
        return Sharing(False, reason=f"Cache-Control: {refused[0]}")
    stale = _zero(directives, "s-maxage") or (
        "s-maxage" not in directives and _zero(directives, "max-age")
    )
    if stale:
        return Sharing(False, reason="the answer is stale at once (max-age=0)")
    names = _vary(vary)
    if isinstance(names, str):
        return Sharing(False, reason=names)
    ttl = _seconds(directives.get("s-maxage") or directives.get("max-age"))
    public = "public" in directives or (ttl is not None and "s-maxage" in directives)
    return Sharing(True, vary=names, public=public, ttl_seconds=ttl)


def _seconds(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return max(0, int(text))
    except ValueError:
        return None


def _uncovered_credentials(
    sharing: Sharing, key_headers: frozenset[str], made_for: Mapping[str, str]
) -> bool:
    for name in CREDENTIALS:
        if name not in key_headers and name not in sharing.vary and _all(made_for, name):
            return True
    return False


def may_reuse(
    sharing: Sharing,
    key_headers: frozenset[str],
    made_for: Mapping[str, str],
    *,
    headers_seen: bool = True,
) -> bool:
    """May an answer made for a request with headers ``made_for`` reach other callers (be
    stored, or shared in flight), whose requests have the same key?

    ``headers_seen`` is false for batched items: the stage never saw the request headers.
    """
    if not sharing.shareable:
        return False
    if headers_seen and not sharing.public:
        return not _uncovered_credentials(sharing, key_headers, made_for)
    return True


def same_variant(sharing: Sharing, made_for: Mapping[str, str], caller: Mapping[str, str]) -> bool:
    """Do the request headers the answer varies on have the same values for ``caller``?"""
    return all(_all(made_for, name) == _all(caller, name) for name in sharing.vary)
