"""Stage variants through the router, with real HTTP to real servers on loopback: a cascade
escalates on low confidence (X-Penstock-Confidence) or a failure and the last answer stands, a
budget policy calls the heavy variant only while the latency budget has room, a weighted policy
splits calls by weight; the served variant shows in X-Penstock-Variant, the profile and the
metrics."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from penstock.contract.profile import parse_profile
from penstock.contract.topology import StageRoute, Topology, VariantRoute
from penstock.contract.wire import CONFIDENCE_HEADER, VARIANT_CALLS, VARIANT_HEADER
from penstock.dataplane.gateway.config import HostPort
from penstock.dataplane.router import Router, RouterConfig
from tests.integration.test_router_stage_stream import serving

pytestmark = pytest.mark.integration


@dataclass
class Model:
    """One variant's server: answers {"by": name} after ``delay`` seconds, with a confidence
    header when ``confidence`` is set, or HTTP ``status`` when that is not 200."""

    name: str
    delay: float = 0.0
    confidence: str | None = None
    status: int = 200
    calls: int = 0
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.bodies.append(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": f"{self.name} broke"}, status=self.status)
        headers = {CONFIDENCE_HEADER: self.confidence} if self.confidence is not None else {}
        return web.json_response({"by": self.name}, headers=headers)


@dataclass
class Running:
    url: str
    admin: str
    session: aiohttp.ClientSession

    async def ask(self, profile: bool = False) -> tuple[int, dict[str, str], dict[str, object]]:
        headers = {"X-Penstock-Profile": "1"} if profile else {}
        async with self.session.post(self.url, json={"q": "hi"}, headers=headers) as answer:
            return answer.status, dict(answer.headers), await answer.json()

    async def metric(self, stage: str, variant: str, outcome: str) -> float:
        async with self.session.get(self.admin + "/metrics") as response:
            text = await response.text()
        pattern = re.compile(
            rf'^{VARIANT_CALLS}\{{(?=[^}}]*stage="{stage}")(?=[^}}]*variant="{variant}")'
            rf'(?=[^}}]*outcome="{outcome}")[^}}]*\}} (\S+)$',
            re.MULTILINE,
        )
        found = pattern.search(text)
        assert found, f"no {VARIANT_CALLS} series for {stage}/{variant}/{outcome}"
        return float(found.group(1))


@asynccontextmanager
async def pipeline(
    models: list[Model],
    *,
    policy: str = "cascade",
    min_confidence: float = 0.5,
    budget_ms: int | None = None,
    reserve_ms: int = 0,
    latency_ms: list[int | None] | None = None,
    weights: list[int] | None = None,
    timeout_seconds: float = 5.0,
) -> AsyncIterator[Running]:
    """A Pipeline of one stage ``answer`` whose variants are ``models``, lightest first, after a
    ``prep`` stage (so the budget policy sees time already spent)."""
    async with AsyncExitStack() as stack:
        prep = Model("prep")
        prep_url = await stack.enter_async_context(serving(prep.handle))
        urls = [await stack.enter_async_context(serving(model.handle)) for model in models]
        variants = tuple(
            VariantRoute(
                model.name,
                url,
                timeout_seconds=timeout_seconds,
                weight=(weights or [1] * len(models))[index],
                latency_ms=(latency_ms or [None] * len(models))[index],
            )
            for index, (model, url) in enumerate(zip(models, urls, strict=True))
        )
        plan = Topology(
            pipeline="qa",
            namespace="ns",
            output="answer",
            stages={
                "prep": StageRoute("prep", prep_url),
                "answer": StageRoute(
                    "answer",
                    "",
                    depends_on=("prep",),
                    variants=variants,
                    policy=policy,
                    min_confidence=min_confidence,
                    reserve_ms=reserve_ms,
                ),
            },
            latency_budget_ms=budget_ms,
        )
        router = Router(
            RouterConfig(
                listen=HostPort("127.0.0.1", 0),
                topology=plan,
                admin_listen=HostPort("127.0.0.1", 0),
            )
        )
        await router.start()
        stack.push_async_callback(router.stop)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Running(
            f"http://127.0.0.1:{router.port}/", f"http://127.0.0.1:{router.admin_port}", session
        )


async def test_a_confident_light_variant_serves_alone() -> None:
    light, heavy = Model("light", confidence="0.9"), Model("heavy")
    async with pipeline([light, heavy]) as running:
        status, headers, document = await running.ask(profile=True)
        assert (await running.metric("answer", "light", "served")) == 1
        assert (await running.metric("answer", "heavy", "served")) == 0
    assert status == 200
    assert document["output"] == {"by": "light"}
    assert headers[VARIANT_HEADER] == "answer=light"
    assert (light.calls, heavy.calls) == (1, 0)
    timing = parse_profile(document, "answer").stages["answer"]
    assert timing.variant == "light"
    assert [(a.variant, a.outcome, a.confidence) for a in timing.attempts] == [
        ("light", "served", 0.9)
    ]


async def test_no_confidence_header_counts_as_confident() -> None:
    light, heavy = Model("light"), Model("heavy")
    async with pipeline([light, heavy]) as running:
        status, _, document = await running.ask()
    assert (status, document, heavy.calls) == (200, {"by": "light"}, 0)


@pytest.mark.parametrize("value", ["0.2", "0"])
async def test_low_confidence_escalates_and_the_heavy_answer_stands(value: str) -> None:
    light, heavy = Model("light", confidence=value), Model("heavy", confidence="0.1")
    async with pipeline([light, heavy], min_confidence=0.5) as running:
        status, headers, document = await running.ask(profile=True)
        assert (await running.metric("answer", "light", "low_confidence")) == 1
        assert (await running.metric("answer", "heavy", "served")) == 1
    assert status == 200
    # The last variant's answer stands, whatever confidence it reports.
    assert document["output"] == {"by": "heavy"}
    assert headers[VARIANT_HEADER] == "answer=heavy"
    assert light.bodies == heavy.bodies  # each variant gets the same request
    timing = parse_profile(document, "answer").stages["answer"]
    assert [(a.variant, a.outcome) for a in timing.attempts] == [
        ("light", "low_confidence"),
        ("heavy", "served"),
    ]


async def test_a_three_step_cascade_stops_at_the_first_confident_variant() -> None:
    models = [Model("tiny", confidence="0.1"), Model("small", confidence="0.8"), Model("big")]
    async with pipeline(models) as running:
        _, headers, document = await running.ask()
    assert document == {"by": "small"}
    assert headers[VARIANT_HEADER] == "answer=small"
    assert [model.calls for model in models] == [1, 1, 0]


@pytest.mark.parametrize(
    "light",
    [
        Model("light", status=500),
        Model("light", delay=2.0),  # past its timeoutSeconds
        Model("light", confidence="not a number"),  # unreadable: confident (served)
    ],
    ids=["HTTP 500", "timeout", "unreadable confidence"],
)
async def test_a_failing_light_variant_escalates(light: Model) -> None:
    heavy = Model("heavy")
    async with pipeline([light, heavy], timeout_seconds=0.5) as running:
        status, _, document = await running.ask()
        failed = await running.metric("answer", "light", "failed")
    assert status == 200
    if light.confidence is not None:
        assert (document, heavy.calls, failed) == ({"by": "light"}, 0, 0)
    else:
        assert (document, heavy.calls, failed) == ({"by": "heavy"}, 1, 1)


async def test_when_every_variant_fails_the_error_names_the_last() -> None:
    light, heavy = Model("light", status=500), Model("heavy", status=500)
    async with pipeline([light, heavy]) as running:
        status, _, document = await running.ask()
        assert (await running.metric("answer", "heavy", "failed")) == 1
    assert status == 502
    assert document["stage"] == "answer"
    assert "stage 'answer' (variant 'heavy') answered HTTP 500" in str(document["error"])


async def test_budget_calls_the_heavy_variant_only_while_it_fits() -> None:
    # Seeded expectations (latencyMs) before anything is measured: light 5 ms, heavy 300 ms.
    light, heavy = Model("light"), Model("heavy")
    async with pipeline(
        [light, heavy], policy="budget", budget_ms=1000, latency_ms=[5, 300]
    ) as running:
        _, headers, _ = await running.ask()
        assert headers[VARIANT_HEADER] == "answer=heavy"
    async with pipeline(
        [light, heavy], policy="budget", budget_ms=1000, reserve_ms=800, latency_ms=[5, 300]
    ) as running:
        _, headers, _ = await running.ask()
        assert headers[VARIANT_HEADER] == "answer=light"  # 1000 - 800 leaves no room for 300


async def test_budget_learns_the_measured_latency() -> None:
    # The heavy variant claims 1 ms but takes 80: once measured (8 calls), it no longer fits the
    # 50 ms the budget leaves (500 - 450 reserved) and the light one is called instead.
    light, heavy = Model("light"), Model("heavy", delay=0.08)
    async with pipeline(
        [light, heavy], policy="budget", budget_ms=500, reserve_ms=450, latency_ms=[1, 1]
    ) as running:
        seen = [(await running.ask())[1][VARIANT_HEADER] for _ in range(12)]
    assert seen == ["answer=heavy"] * 8 + ["answer=light"] * 4
    assert (heavy.calls, light.calls) == (8, 4)


async def test_weighted_split_follows_the_weights() -> None:
    random.seed(1234)
    light, heavy = Model("light"), Model("heavy")
    async with pipeline([light, heavy], policy="weighted", weights=[3, 1]) as running:
        served = Counter([(await running.ask())[1][VARIANT_HEADER] for _ in range(200)])
        light_calls = await running.metric("answer", "light", "served")
    assert served["answer=light"] + served["answer=heavy"] == 200
    assert light_calls == served["answer=light"] == light.calls
    # 3:1 -> 150 expected; a binomial(200, 0.75) is within 130..170 with p > 0.999.
    assert 130 <= light.calls <= 170, served
    assert heavy.calls == 200 - light.calls  # a weighted split never escalates
