"""Integration tests: what a hostile caller or a careless stage must not get from the gateway
(issue 13). Per class of failure, never one example only:

1. coalescing shares only answers that are shareable, under the same key material;
2. cache keys cover what changes the answer: key headers, Vary, credentials;
3. one JSON text, one key: only strict UTF-8 JSON on the stage endpoint;
8. the batch queue is bounded and every queued request has a deadline;
9. never aiohttp's text/plain 500: hostile input gets a JSON answer naming the stage.

The stage is a real process (an aiohttp script, below) and so is Redis; the gateway runs
in-process (its metrics are read) or, for the property test, as `python -m
penstock.dataplane.gateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from penstock.dataplane.gateway.cache import cache_key
from penstock.dataplane.gateway.config import GatewayConfig, HostPort
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.jsonbody import canonical
from tests.json_bodies import json_values, utf8_json
from tests.support import RedisServer, ScriptServer, free_port, wait_http

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]

STAGE_APP = r"""
import asyncio, json, sys
from aiohttp import web

calls = {"/": 0, "/batch": 0}
batches = []
WATCHED = ("authorization", "cookie", "accept", "x-tenant", "x-caller", "x-name")

def controls(body):
    ctl = body.get("ctl") if isinstance(body, dict) else None
    return ctl if isinstance(ctl, dict) else {}

def number(value, default=0.0):
    return min(float(value), 2.0) if isinstance(value, (int, float)) and value >= 0 else default

async def root(request):
    calls["/"] += 1
    call = calls["/"]
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return web.json_response({"call": call, "not_json": len(raw)})
    ctl = controls(body)
    await asyncio.sleep(number(ctl.get("sleep")))
    seen = {name: request.headers.getall(name, []) for name in WATCHED}
    raw_name = [v.encode("utf-8", "surrogateescape").hex() for v in seen.pop("x-name")]
    headers = []
    answer_headers = ctl.get("headers")
    if isinstance(answer_headers, list):
        headers = [(str(n), str(v).replace("{call}", str(call))) for n, v in answer_headers]
    status = ctl.get("status") if isinstance(ctl.get("status"), int) else 200
    answer = {"call": call, "echo": body, "seen": seen, "raw_x_name": raw_name}
    response = web.json_response(answer, status=status)
    for name, value in headers:
        response.headers.add(name, value)
    return response

async def batch(request):
    calls["/batch"] += 1
    items = await request.json()
    batches.append(len(items))
    await asyncio.sleep(max([number(controls(i).get("sleep")) for i in items] or [0]))
    return web.json_response([{"echo": item} for item in items])

async def count(request):
    return web.json_response({"calls": calls, "batches": batches})

async def reset(request):
    calls["/"] = calls["/batch"] = 0
    batches.clear()
    return web.json_response({})

async def healthz(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/", root)
app.router.add_post("/batch", batch)
app.router.add_get("/count", count)
app.router.add_post("/reset", reset)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


class StageProcess(ScriptServer):
    """The stage above as a process of its own, counting its calls."""

    def __init__(self) -> None:
        super().__init__(STAGE_APP)

    def _call(self, method: str, path: str) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request(method, path)
        return json.loads(connection.getresponse().read())

    def reset(self) -> None:
        self._call("POST", "/reset")

    def calls(self, path: str = "/") -> int:
        return int(self._call("GET", "/count")["calls"][path])

    def batches(self) -> list[int]:
        return list(self._call("GET", "/count")["batches"])


@pytest.fixture(scope="module")
def stage_process() -> Iterator[StageProcess]:
    stage = StageProcess()
    yield stage
    stage.stop()


@pytest.fixture
def stage(stage_process: StageProcess) -> StageProcess:
    stage_process.reset()
    return stage_process


@asynccontextmanager
async def gateway(stage: StageProcess, **overrides: Any) -> AsyncIterator[Gateway]:
    settings: dict[str, Any] = {
        "listen": HostPort("127.0.0.1", 0),
        "admin_listen": HostPort("127.0.0.1", 0),
        "upstream": stage.url,
        "pipeline": "rag",
        "stage": "embed",
        "namespace": "search",
        "timeout_seconds": 5.0,
        "health_interval_seconds": 0.2,
        **overrides,
    }
    instance = Gateway(GatewayConfig(**settings))
    await instance.start()
    try:
        deadline = time.monotonic() + 10
        while not instance.ready:
            assert time.monotonic() < deadline, instance.not_ready_reason
            await asyncio.sleep(0.01)
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Reply:
    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json: Any = json.loads(body) if body else None
        except ValueError:
            self.json = None  # not JSON: the assertions say so

    @property
    def cache(self) -> str:
        return self.headers.get("X-Penstock-Cache", "")

    @property
    def call(self) -> int:
        return int(self.json["call"])


async def send(
    client: aiohttp.ClientSession,
    gw: Gateway,
    body: Any = None,
    *,
    data: bytes | None = None,
    headers: Any = None,
    path: str = "/",
) -> Reply:
    payload = data if data is not None else json.dumps(body).encode()
    all_headers = CIMultiDict(headers or {})
    all_headers.setdefault("Content-Type", "application/json")
    async with client.post(
        f"http://127.0.0.1:{gw.port}{path}", data=payload, headers=all_headers
    ) as response:
        reply = Reply(response.status, CIMultiDict(response.headers), await response.read())
    await gw.stored()
    return reply


def slow(seconds: float, *answer_headers: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """A body that makes the stage wait, then answer with these headers."""
    return {"ctl": {"sleep": seconds, "headers": [list(h) for h in answer_headers]}, **extra}


def sample(gw: Gateway, name: str, **labels: str) -> float:
    base = {"namespace": "search", "pipeline": "rag", "stage": "embed"}
    return gw.metrics.registry.get_sample_value(name, {**base, **labels}) or 0.0


def assert_json_error(reply: Reply, status: int, *needles: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["stage"] == "embed"
    for needle in needles:
        assert needle in reply.json["error"], reply.json


async def burst(
    client: aiohttp.ClientSession, gw: Gateway, body: Any, headers: list[dict[str, str]]
) -> list[Reply]:
    """Identical bodies sent at once; the first is on its way before the others start."""
    first = asyncio.ensure_future(send(client, gw, body, headers=headers[0]))
    await asyncio.sleep(0.1)
    rest = await asyncio.gather(*(send(client, gw, body, headers=h) for h in headers[1:]))
    return [await first, *rest]


NEVER_SHARED = [
    pytest.param([("Cache-Control", "private")], id="private"),
    pytest.param([("Cache-Control", 'private="x-user", max-age=60')], id="private-field"),
    pytest.param([("Cache-Control", "no-store")], id="no-store"),
    pytest.param([("Cache-Control", "no-cache")], id="no-cache"),
    pytest.param([("Cache-Control", "public, max-age=0")], id="max-age-0"),
    pytest.param([("Set-Cookie", "session=s{call}")], id="set-cookie"),
    pytest.param([("Cache-Control", "public"), ("Set-Cookie", "s={call}")], id="public-cookie"),
    pytest.param([("Vary", "*")], id="vary-star"),
    pytest.param([("Vary", "accept, *")], id="vary-list-star"),
]


# --------------------------------------------------------------------------- 1. coalescing


@pytest.mark.parametrize("answer_headers", NEVER_SHARED)
async def test_unshareable_in_flight_answers_reach_only_their_caller(
    stage: StageProcess,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    answer_headers: list[tuple[str, str]],
) -> None:
    async with gateway(stage, redis_url=redis_server.url) as gw:
        callers = [{"X-Caller": str(n)} for n in range(4)]
        replies = await burst(client, gw, slow(0.3, *answer_headers), callers)
        assert [r.status for r in replies] == [200] * 4
        assert len({r.call for r in replies}) == 4  # four stage calls, each its own answer
        for caller, reply in zip(callers, replies, strict=True):
            assert reply.json["seen"]["x-caller"] == [caller["X-Caller"]]
            cookies = reply.headers.getall("Set-Cookie", [])
            assert all(str(reply.call) in cookie for cookie in cookies)
        assert stage.calls() == 4
        assert sample(gw, "penstock_stage_coalesced_requests_total") == 0
        assert redis_server.keys() == []  # and nothing of it was stored


@pytest.mark.parametrize(
    "fresh",
    [{"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cache-Control": "max-age=0"}],
)
async def test_a_caller_asking_for_a_fresh_answer_never_joins_another(
    stage: StageProcess, client: aiohttp.ClientSession, fresh: dict[str, str]
) -> None:
    async with gateway(stage) as gw:
        leader, own, joined = await burst(client, gw, slow(0.4), [{}, fresh, {}])
        assert own.call != leader.call  # its own, fresh call
        assert joined.call == leader.call  # a plain caller still shares
        assert stage.calls() == 2


async def test_a_no_store_caller_neither_leads_nor_joins(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        no_store = {"Cache-Control": "no-store"}
        first, second, third = await burst(client, gw, slow(0.3), [no_store, {}, no_store])
        assert len({first.call, second.call, third.call}) == 3
        assert stage.calls() == 3


async def test_shareable_answers_are_still_coalesced(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        for answer_headers in ([], [("Cache-Control", "public, max-age=60")]):
            stage.reset()
            replies = await burst(client, gw, slow(0.3, *answer_headers), [{}] * 5)
            assert {r.call for r in replies} == {1}
            assert stage.calls() == 1


async def test_a_varying_answer_is_shared_only_with_the_same_variant(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        tenants = [{"X-Tenant": t} for t in ("a", "a", "b", "a", "b")]
        replies = await burst(client, gw, slow(0.3, ("Vary", "X-Tenant")), tenants)
        for tenant, reply in zip(tenants, replies, strict=True):
            assert reply.json["seen"]["x-tenant"] == [tenant["X-Tenant"]]
        assert replies[1].call == replies[3].call == replies[0].call
        assert len({replies[0].call, replies[2].call, replies[4].call}) == 3


@pytest.mark.parametrize(
    ("key_headers", "credential", "answer_headers", "shared"),
    [
        # Authorization is keyed by default: different tokens, different keys
        (("accept", "authorization"), "Authorization", [], False),
        # not keyed: only a public answer may go to another token
        (("accept",), "Authorization", [], False),
        (("accept",), "Authorization", [("Cache-Control", "public")], True),
        (("accept",), "Authorization", [("Cache-Control", "s-maxage=30")], True),
        (("accept",), "Authorization", [("Cache-Control", "max-age=30")], False),
        # Cookie is not keyed by default
        (("accept", "authorization"), "Cookie", [], False),
        (("accept", "authorization"), "Cookie", [("Cache-Control", "public")], True),
        (("cookie",), "Cookie", [], False),  # keyed: different cookies, different keys
    ],
)
async def test_an_answer_made_with_credentials_is_shared_only_when_keyed_or_public(
    stage: StageProcess,
    client: aiohttp.ClientSession,
    key_headers: tuple[str, ...],
    credential: str,
    answer_headers: list[tuple[str, str]],
    shared: bool,
) -> None:
    async with gateway(stage, cache_key_headers=key_headers) as gw:
        callers = [{credential: f"secret-{n}"} for n in range(3)]
        replies = await burst(client, gw, slow(0.3, *answer_headers), callers)
        calls = {r.call for r in replies}
        assert len(calls) == (1 if shared else 3)
        if not shared:
            for caller, reply in zip(callers, replies, strict=True):
                assert reply.json["seen"][credential.lower()] == [caller[credential]]
        # the same credential shares only when it is in the key (or the answer is public)
        same = await burst(client, gw, slow(0.3, *answer_headers), [callers[0]] * 3)
        keyed = credential.lower() in key_headers
        assert len({r.call for r in same}) == (1 if shared or keyed else 3)


async def test_unshareable_keys_go_to_the_stage_at_once_afterwards(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        body = slow(0.5, ("Cache-Control", "private"))
        await burst(client, gw, body, [{}, {}])  # learns that this key's answers are private
        started = time.monotonic()
        replies = await asyncio.gather(*(send(client, gw, body) for _ in range(4)))
        assert len({r.call for r in replies}) == 4
        assert time.monotonic() - started < 0.95  # not queued behind a leader (2 x 0.5 s)


# --------------------------------------------------------------------------- 2. cache keys


async def test_a_vary_cookie_answer_is_kept_per_cookie(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    body = slow(0, ("Vary", "Cookie"))  # Vary puts the cookie in the key: no need for public
    async with gateway(stage, redis_url=redis_server.url) as gw:
        a1 = await send(client, gw, body, headers={"Cookie": "user=a"})
        a2 = await send(client, gw, body, headers={"Cookie": "user=a"})
        b1 = await send(client, gw, body, headers={"Cookie": "user=b"})
        b2 = await send(client, gw, body, headers={"Cookie": "user=b"})
        none = await send(client, gw, body)
        assert [r.cache for r in (a1, a2, b1, b2, none)] == ["miss", "hit", "miss", "hit", "miss"]
        assert a2.json == a1.json and a2.json["seen"]["cookie"] == ["user=a"]
        assert b2.json == b1.json and b2.json["seen"]["cookie"] == ["user=b"]
        assert none.json["seen"]["cookie"] == []
        assert stage.calls() == 3
        keys = redis_server.keys()
        assert len(keys) == 4 and sum(b":vary:" in k for k in keys) == 3  # marker + 3 variants


async def test_a_vary_on_a_key_header_is_one_more_lookup_not_a_wrong_answer(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    body = slow(0, ("Vary", "Accept-Language"))
    async with gateway(stage, redis_url=redis_server.url) as gw:
        de = await send(client, gw, body, headers={"Accept-Language": "de"})
        fr = await send(client, gw, body, headers={"Accept-Language": "fr"})
        de_again = await send(client, gw, body, headers={"Accept-Language": "de"})
        assert (de.cache, fr.cache, de_again.cache) == ("miss", "miss", "hit")
        assert de_again.call == de.call != fr.call


@pytest.mark.parametrize("answer_headers", NEVER_SHARED)
async def test_unshareable_answers_are_never_stored(
    stage: StageProcess,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    answer_headers: list[tuple[str, str]],
) -> None:
    async with gateway(stage, redis_url=redis_server.url) as gw:
        replies = [await send(client, gw, slow(0, *answer_headers)) for _ in range(2)]
        assert [r.cache for r in replies] == ["miss", "miss"]
        assert replies[0].call != replies[1].call
        assert redis_server.keys() == []


async def test_key_headers_name_what_is_part_of_the_key(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage, redis_url=redis_server.url, cache_key_headers=("x-tenant",)) as gw:
        first = await send(client, gw, {"q": 1}, headers={"X-Tenant": "a", "Accept": "x/a"})
        other_accept = await send(client, gw, {"q": 1}, headers={"X-Tenant": "a"})
        other_tenant = await send(client, gw, {"q": 1}, headers={"X-Tenant": "b"})
        assert (first.cache, other_accept.cache, other_tenant.cache) == ("miss", "hit", "miss")
        two_lines = CIMultiDict([("X-Tenant", "b"), ("X-Tenant", "a")])
        assert (await send(client, gw, {"q": 1}, headers=two_lines)).cache == "miss"


@pytest.mark.parametrize(
    ("credential", "key_headers"),
    [("Authorization", ("accept",)), ("Cookie", ("accept", "authorization"))],
)
async def test_credential_answers_are_stored_only_when_keyed_or_public(
    stage: StageProcess,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    credential: str,
    key_headers: tuple[str, ...],
) -> None:
    async with gateway(stage, redis_url=redis_server.url, cache_key_headers=key_headers) as gw:
        mine = {credential: "alice"}
        for _ in range(2):
            assert (await send(client, gw, {"q": "private"}, headers=mine)).cache == "miss"
        assert redis_server.keys() == []
        public = slow(0, ("Cache-Control", "public"))
        made = await send(client, gw, public, headers=mine)
        served = await send(client, gw, public, headers={credential: "bob"})
        assert (made.cache, served.cache) == ("miss", "hit")  # the stage said: anyone


async def test_freshness_from_the_stage_caps_the_ttl(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage, redis_url=redis_server.url) as gw:
        await send(client, gw, slow(0, ("Cache-Control", "max-age=2")))
        [key] = redis_server.keys()
        assert 0 < redis_server.client.ttl(key) <= 2


async def test_the_raw_query_is_key_material(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage, redis_url=redis_server.url) as gw:
        plus = await send(client, gw, {"q": 1}, path="/?q=a+b")
        encoded = await send(client, gw, {"q": 1}, path="/?q=a%2Bb")
        assert (plus.cache, encoded.cache) == ("miss", "miss")
        assert (await send(client, gw, {"q": 1}, path="/?q=a+b")).cache == "hit"


# --------------------------------------------------------------------------- 3. strict JSON

NOT_STRICT_JSON = [
    pytest.param('{"q": "hi"}'.encode("utf-16"), "UTF-16 byte order mark", id="utf-16"),
    pytest.param('{"q": "hi"}'.encode("utf-16-be"), "UTF-8", id="utf-16-be"),
    pytest.param('{"q": "hi"}'.encode("utf-32"), "UTF-32 byte order mark", id="utf-32"),
    pytest.param('{"q": "hi"}'.encode("utf-32-le"), "UTF-8", id="utf-32-le"),
    pytest.param(b'\xef\xbb\xbf{"q": "hi"}', "byte order mark", id="utf-8-bom"),
    pytest.param('{"q": "hé"}'.encode("latin-1"), "not UTF-8", id="latin-1"),
    pytest.param(b'{"q": NaN}', "NaN", id="nan"),
    pytest.param(b'{"q": -Infinity}', "-Infinity", id="infinity"),
    pytest.param(b'{"q": 1e400}', "out of the range", id="overflow"),
    pytest.param(b'{"q": "\\udc00"}', "lone surrogate", id="lone-surrogate"),
    pytest.param(b'{"q": 1, "q": 2}', "more than once", id="duplicate-key"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested deeper", id="deep"),
    pytest.param(b'{"q": ', "not valid JSON", id="truncated"),
]


@pytest.mark.parametrize(("body", "message"), NOT_STRICT_JSON)
@pytest.mark.parametrize("content_type", ["application/json", None, "application/x+json"])
async def test_only_strict_utf8_json_is_taken_on_the_stage_endpoint(
    stage: StageProcess,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    body: bytes,
    message: str,
    content_type: str | None,
) -> None:
    async with gateway(stage, redis_url=redis_server.url) as gw:
        # a raw request: aiohttp's client would add a Content-Type of its own
        reply = await raw_post(gw.port, body, content_type)
        assert_json_error(reply, 400, "request body", message)
        assert stage.calls() == 0 and redis_server.keys() == []


async def test_a_charset_other_than_utf8_is_refused(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        for charset in ("utf-16", "latin-1", '"iso-8859-1"'):
            headers = {"Content-Type": f"application/json; charset={charset}"}
            reply = await send(client, gw, {"q": "ascii"}, headers=headers)
            assert_json_error(reply, 400, "charset=", "must be UTF-8")
        ok = {"Content-Type": "application/json; charset=UTF-8"}
        assert (await send(client, gw, {"q": 1}, headers=ok)).status == 200
        assert stage.calls() == 1


async def test_bodies_not_declared_json_pass_through_without_a_key(
    stage: StageProcess, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    utf16 = '{"q": "same"}'.encode("utf-16")
    async with gateway(stage, redis_url=redis_server.url) as gw:
        for body in (b"plain text", utf16, utf16):
            reply = await send(client, gw, data=body, headers={"Content-Type": "text/plain"})
            assert reply.status == 200 and reply.cache == "bypass"
        plain = await send(client, gw, {"q": "same"}, headers={"Content-Type": "text/plain"})
        assert plain.cache == "miss"  # strict UTF-8 JSON is keyed whatever its label
        assert stage.calls() == 4


async def test_a_bad_item_gets_its_own_400_and_its_batch_goes_on(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(
        stage, batch_path="/batch", batch_max_size=16, batch_max_latency_ms=300
    ) as gw:
        good = [send(client, gw, {"i": i}) for i in range(3)]
        bad = [send(client, gw, data=body) for body, _ in BAD_ITEMS]
        replies = await asyncio.gather(*good, *bad)
        for index, reply in enumerate(replies[:3]):
            assert reply.status == 200 and reply.json == {"echo": {"i": index}}
        for reply, (_, message) in zip(replies[3:], BAD_ITEMS, strict=True):
            assert_json_error(reply, 400, message)
        assert stage.batches() == [3]


BAD_ITEMS = [
    (b'{"i": NaN}', "NaN"),
    ('{"i": 1}'.encode("utf-16"), "UTF-16"),
    (b'{"i": "\\ud800"}', "lone surrogate"),
    (b'{"i": 1e999}', "out of the range"),
    (b"[" * 1000 + b"]" * 1000, "nested deeper"),
    (b"", "empty"),
]


# --------------------------------------------------------------------------- 8. batch queue


async def test_a_full_batch_queue_sheds_with_a_json_503_and_retry_after(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(
        stage,
        batch_path="/batch",
        batch_max_size=1,
        batch_max_latency_ms=0,
        batch_max_inflight=1,
        batch_max_queue=2,
    ) as gw:
        first = asyncio.ensure_future(send(client, gw, slow(0.6, n=0)))
        await asyncio.sleep(0.15)  # out at the stage; two more may wait, the rest are shed
        queued = [asyncio.ensure_future(send(client, gw, slow(0.1, n=n))) for n in (1, 2)]
        await asyncio.sleep(0.15)
        started = time.monotonic()
        shed = await asyncio.gather(*(send(client, gw, slow(0.1, n=n)) for n in range(3, 6)))
        assert time.monotonic() - started < 0.4  # at once, not after the queue
        for reply in shed:
            assert_json_error(reply, 503, "'embed'", "batch queue is full")
            assert reply.headers["Retry-After"] == "1"
        assert [r.status for r in await asyncio.gather(first, *queued)] == [200] * 3
        assert sample(gw, "penstock_stage_requests_total", outcome="overloaded") == 3


async def test_queued_requests_fail_at_their_deadline_with_a_json_504(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(
        stage,
        batch_path="/batch",
        batch_max_size=1,
        batch_max_latency_ms=0,
        batch_max_inflight=1,
        timeout_seconds=1.0,
    ) as gw:
        started = time.monotonic()
        replies = await asyncio.gather(*(send(client, gw, slow(0.4, n=n)) for n in range(8)))
        elapsed = time.monotonic() - started
        assert elapsed < 1.6  # 8 batches of 0.4 s one at a time would take 3.2 s
        statuses = [r.status for r in replies]
        assert statuses.count(200) >= 1 and statuses.count(504) >= 5
        for reply in replies:
            if reply.status == 504:
                assert_json_error(reply, 504, "'embed' did not answer within 1s")
        await asyncio.sleep(0.5)
        assert len(stage.batches()) <= 4  # expired requests were never sent


# --------------------------------------------------------------------------- 9. no text 500


async def raw_exchange(port: int, request: bytes) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        return Reply(status, headers, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def raw_post(
    port: int, body: bytes, content_type: str | None = "application/json", extra: bytes = b""
) -> Reply:
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    head += extra + f"Content-Length: {len(body)}\r\n\r\n".encode()
    return await raw_exchange(port, head + body)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("€ 20".encode(), id="utf-8"),
        pytest.param(b"caf\xe9", id="latin-1"),
        pytest.param(b"\xff\xfe\x80", id="not-utf-8"),
        pytest.param("名前".encode(), id="cjk"),
    ],
)
async def test_header_values_beyond_latin1_are_forwarded_byte_for_byte(
    stage: StageProcess, redis_server: RedisServer, value: bytes
) -> None:
    async with gateway(
        stage, redis_url=redis_server.url, cache_key_headers=("accept", "x-name")
    ) as gw:
        extra = b"X-Name: " + value + b"\r\nAccept: " + value + b"\r\n"
        first = await raw_post(gw.port, b'{"q": 1}', extra=extra)
        assert first.status == 200, first.body
        assert first.json["raw_x_name"] == [value.hex()]  # the stage saw the exact bytes
        again = await raw_post(gw.port, b'{"q": 1}', extra=extra)
        assert (first.cache, again.cache) == ("miss", "hit")
        other = await raw_post(gw.port, b'{"q": 1}', extra=b"X-Name: plain\r\n")
        assert other.cache == "miss"


async def test_hostile_requests_get_json_answers_never_a_text_500(
    stage: StageProcess, redis_server: RedisServer
) -> None:
    bodies = [
        b"[" * 200_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'"\\ud800\\ud800"',
        b'{"\\udfff": "x"}',
        b"\xff" * 100,
        b'{"a": 1' + b', "a": 1' * 1000 + b"}",
    ]
    async with gateway(stage, redis_url=redis_server.url) as gw:
        for body in bodies:
            for extra in (b"", b"Accept: text/html\r\n", b"Authorization: \xe2\x82\xac\r\n"):
                reply = await raw_post(gw.port, body, extra=extra)
                assert reply.status == 400, reply.body
                assert_json_error(reply, 400, "request body")
        assert stage.calls() == 0


async def test_an_unexpected_error_is_a_json_500_naming_the_stage(
    stage: StageProcess, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway(stage) as gw:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in the gateway")

        gw.stage._pool.request = broken  # type: ignore[method-assign]
        for headers in ({}, {"Accept": "text/html"}):
            reply = await send(client, gw, {"q": 1}, headers=headers)
            assert_json_error(reply, 500, "'embed'", "RuntimeError: a bug in the gateway")
        other = await raw_exchange(
            gw.port, b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert_json_error(other, 500, "RuntimeError")
        assert sample(gw, "penstock_stage_requests_total", outcome="gateway_error") == 3
    assert "a bug in the gateway" in caplog.text and "Traceback" in caplog.text


# --------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def gateway_process(
    stage_process: StageProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, RedisServer]]:
    """`python -m penstock.dataplane.gateway` with a cache, as the operator runs it."""
    server = RedisServer()
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")])
        ),
        "PENSTOCK_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "PENSTOCK_GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "PENSTOCK_GATEWAY_UPSTREAM": stage_process.url,
        "PENSTOCK_GATEWAY_REDIS_URL": server.url,
        "PENSTOCK_GATEWAY_REDIS_TIMEOUT_MS": "1000",
        "PENSTOCK_GATEWAY_STAGE": "embed",
    }
    log = (tmp_path_factory.mktemp("gateway") / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "penstock.dataplane.gateway"], env=env, stderr=log, cwd=REPO
    )
    try:
        wait_http(admin, "/ready")
        yield port, server
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        server.close()


def post_sync(port: int, body: bytes) -> tuple[int, str, str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    content_type = response.getheader("Content-Type", "")
    answer = json.loads(data) if content_type.startswith("application/json") else data
    return response.status, response.getheader("X-Penstock-Cache", ""), content_type, answer


JSON_VALUES = json_values(magnitude=20, text=10, width=3, leaves=10)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be", "latin-1", "cp1252"]
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(value=JSON_VALUES, encoding=st.sampled_from(ENCODINGS), ensure_ascii=st.booleans())
@example(value="Ã©", encoding="latin-1", ensure_ascii=False)  # its latin-1 is UTF-8 of "é"
@example(value=["x"], encoding="utf-16", ensure_ascii=True)
def test_property_any_encoding_shares_the_utf8_key_or_is_a_400(
    gateway_process: tuple[int, RedisServer], value: Any, encoding: str, ensure_ascii: bool
) -> None:
    port, redis_server = gateway_process
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    status, _, _, answer = post_sync(port, text.encode("utf-8"))
    assert status == 200, answer  # the UTF-8 text is always taken, and stored under this key:
    key = cache_key(
        pipeline="",
        stage="embed",
        stage_image="",
        model_version="",
        method="POST",
        path="/",
        body=canonical(value),
        headers={},
        key_headers=("accept", "authorization"),
    )
    deadline = time.monotonic() + 5
    while not redis_server.client.exists(key):  # stored just after the answer was sent
        assert time.monotonic() < deadline, "the UTF-8 text's answer was not stored"
        time.sleep(0.005)
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        return
    status, cache, content_type, answer = post_sync(port, body)
    read = utf8_json(body)
    if read == canonical(value):  # the same text (e.g. latin-1 of ASCII): the same key
        assert (status, cache) == (200, "hit"), answer
    elif read is not None:  # UTF-8 of another text ("Ã©" in latin-1 is "é" in UTF-8)
        assert status == 200, answer
    else:  # UTF-16, UTF-32, a BOM, latin-1 beyond ASCII: refused, never sharing a key
        assert status == 400, answer
        assert content_type.startswith("application/json") and answer["stage"] == "embed"


@PROPERTY
@given(body=st.binary(max_size=48))
def test_property_random_bytes_are_answered_or_a_json_400_never_a_500(
    gateway_process: tuple[int, RedisServer], body: bytes
) -> None:
    status, _, content_type, answer = post_sync(gateway_process[0], body)
    assert status in (200, 400), answer
    assert content_type.startswith("application/json")
    if status == 400:
        assert answer["stage"] == "embed" and answer["error"].startswith("request body")


async def test_the_admin_ports_errors_are_json_naming_the_stage(
    stage: StageProcess, client: aiohttp.ClientSession
) -> None:
    async with gateway(stage) as gw:
        base = f"http://127.0.0.1:{gw.admin_port}"
        async with client.get(f"{base}/nope") as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"
            body = await resp.json()
        assert body["stage"] == "embed"
        assert "GET /metrics" in body["error"]
        async with client.post(f"{base}/metrics") as resp:
            assert resp.status == 405
            assert (await resp.json())["stage"] == "embed"
