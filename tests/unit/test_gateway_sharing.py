"""Unit tests: when an answer may reach another caller (dataplane/sharing.py), hit-for-pass."""

from __future__ import annotations

import time

import pytest
from multidict import CIMultiDict

from penstock.dataplane.gateway.coalesce import Coalescer
from penstock.dataplane.gateway.sharing import (
    RequestRules,
    answer_sharing,
    may_reuse,
    parse_cache_control,
    request_rules,
    same_variant,
)

KEYED = frozenset({"accept", "authorization"})


def test_cache_control_parsing() -> None:
    assert parse_cache_control(['Max-Age=60, private="set-cookie"', "no-transform"]) == {
        "max-age": "60",
        "private": "set-cookie",
        "no-transform": None,
    }
    assert parse_cache_control([" , ,"]) == {}


@pytest.mark.parametrize(
    ("headers", "rules"),
    [
        ({}, RequestRules()),
        ({"Cache-Control": "no-cache"}, RequestRules(lookup=False, join=False, store=True)),
        ({"cache-control": "NO-CACHE"}, RequestRules(lookup=False, join=False, store=True)),
        ({"Pragma": "no-cache"}, RequestRules(lookup=False, join=False, store=True)),
        ({"Cache-Control": "max-age=0"}, RequestRules(lookup=False, join=False, store=True)),
        ({"Cache-Control": "no-store"}, RequestRules(lookup=True, join=False, store=False)),
        ({"Cache-Control": "max-age=60"}, RequestRules()),
    ],
)
def test_request_rules(headers: dict[str, str], rules: RequestRules) -> None:
    assert request_rules(CIMultiDict(headers)) == rules


@pytest.mark.parametrize(
    "headers",
    [
        [("Cache-Control", "private")],
        [("Cache-Control", 'private="x-user"')],
        [("cache-control", "No-Store")],
        [("Cache-Control", "no-cache")],
        [("Cache-Control", 'no-cache="set-cookie"')],
        [("Cache-Control", "public, max-age=0")],
        [("Cache-Control", "s-maxage=0, max-age=60")],
        [("Cache-Control", "max-age=60"), ("Cache-Control", "private")],
        [("Set-Cookie", "session=1")],
        [("set-cookie", "a=b"), ("Cache-Control", "public")],
        [("Vary", "*")],
        [("Vary", "accept, *")],
        [("Vary", "x y")],
        [("Vary", ", ".join(f"x-h{n}" for n in range(17)))],
    ],
)
def test_answers_that_are_never_shared(headers: list[tuple[str, str]]) -> None:
    sharing = answer_sharing(headers)
    assert not sharing.shareable and sharing.reason
    assert not may_reuse(sharing, KEYED, CIMultiDict())


def test_answers_that_may_be_shared() -> None:
    plain = answer_sharing([("Content-Type", "application/json")])
    assert plain.shareable and plain.vary == () and not plain.public
    varied = answer_sharing([("Vary", "Accept-Language, x-tenant"), ("vary", "ACCEPT")])
    assert varied.vary == ("accept", "accept-language", "x-tenant")
    fresh = answer_sharing([("Cache-Control", "max-age=30")])
    assert fresh.ttl_seconds == 30 and not fresh.public
    shared = answer_sharing([("Cache-Control", "s-maxage=10, max-age=600")])
    assert shared.ttl_seconds == 10 and shared.public
    assert answer_sharing([("Cache-Control", "public")]).public


def test_credentials_not_in_the_key_need_a_public_answer() -> None:
    plain = answer_sharing([])
    public = answer_sharing([("Cache-Control", "public")])
    varies = answer_sharing([("Vary", "Cookie")])
    by_accept = frozenset({"accept"})
    token = CIMultiDict({"Authorization": "Bearer a"})
    cookie = CIMultiDict({"Cookie": "session=a"})
    assert may_reuse(plain, KEYED, token)  # authorization is part of the key
    assert not may_reuse(plain, by_accept, token)
    assert may_reuse(public, by_accept, token)
    assert not may_reuse(plain, KEYED, cookie)  # cookie is not keyed by default
    assert may_reuse(varies, KEYED, cookie)  # Vary: Cookie puts it in the key
    assert may_reuse(plain, frozenset({"cookie"}), cookie)
    assert may_reuse(plain, by_accept, CIMultiDict())  # no credentials at all
    # a batched item's answer never saw the request headers
    assert may_reuse(plain, by_accept, token, headers_seen=False)
    assert not may_reuse(answer_sharing([("Set-Cookie", "x")]), KEYED, token, headers_seen=False)


def test_same_variant_compares_every_value_in_order() -> None:
    sharing = answer_sharing([("Vary", "cookie, accept-language")])
    leader = CIMultiDict([("Cookie", "a=1"), ("Accept-Language", "de")])
    assert same_variant(
        sharing, leader, CIMultiDict([("cookie", "a=1"), ("accept-language", "de")])
    )
    assert not same_variant(
        sharing, leader, CIMultiDict([("Cookie", "a=2"), ("Accept-Language", "de")])
    )
    assert not same_variant(sharing, leader, CIMultiDict([("Accept-Language", "de")]))
    two = CIMultiDict([("Cookie", "a=1"), ("Cookie", "b=2"), ("Accept-Language", "de")])
    assert not same_variant(sharing, leader, two)
    assert same_variant(answer_sharing([]), leader, CIMultiDict())  # varies on nothing


def test_coalescer_remembers_unshareable_keys_for_a_while() -> None:
    coalescer: Coalescer[int] = Coalescer(pass_seconds=0.05)
    assert not coalescer.passes("k")
    coalescer.unshareable("k")
    assert coalescer.passes("k") and not coalescer.passes("other")
    time.sleep(0.06)
    assert not coalescer.passes("k")


def test_coalescer_pass_memory_is_bounded() -> None:
    coalescer: Coalescer[int] = Coalescer()
    for number in range(5000):
        coalescer.unshareable(str(number))
    assert len(coalescer._pass) == 4096
    assert not coalescer.passes("0") and coalescer.passes("4999")
