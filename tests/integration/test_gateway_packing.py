"""Prompt packing through a real gateway in front of a real stage server: concurrent requests
become one call of POST /, each caller gets its own part, a missing part is asked alone, and
the gateway's flags come from a rendered Pipeline (batching.pack)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable
from penstock.api.validation import validate_spec
from penstock.contract.gateway import Placement, gateway_args
from penstock.dataplane.gateway.config import GatewayConfig, HostPort, parse_config
from penstock.dataplane.gateway.server import Gateway

pytestmark = pytest.mark.integration


class Llm:
    """Answers a packed prompt with a numbered list (leaving out prompts in ``drop``)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.callers: list[str] = []
        self.drop: set[str] = set()
        self.port = 0

    async def root(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["question"]
        self.prompts.append(prompt)
        self.callers.append(request.headers.get("Authorization", ""))
        await asyncio.sleep(0.05)
        asked = re.findall(r"^Q(\d+): (.*)$", prompt, re.M)
        if asked:
            text = "\n".join(f"{n}. re: {q}" for n, q in asked if q not in self.drop)
        else:
            text = f"re: {prompt}"
        return web.json_response({"answer": text, "temperature": body.get("temperature")})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")


@pytest.fixture
async def llm() -> AsyncIterator[Llm]:
    server = Llm()
    app = web.Application()
    app.router.add_post("/", server.root)
    app.router.add_get("/healthz", server.healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server
    await runner.cleanup()


def spec() -> PipelineSpec:
    result = validate_spec(
        {
            "stages": [
                {
                    "name": "llm",
                    "image": "x/llm:1",
                    "batching": {
                        "maxBatchSize": 8,
                        "maxLatencyMs": 50,
                        "pack": {
                            "promptField": "question",
                            "answerField": "answer",
                            "template": "Answer each:\n{items}",
                            "itemTemplate": "Q{number}: {prompt}",
                        },
                    },
                }
            ]
        }
    )
    assert result.spec is not None, result.errors
    return result.spec


def rendered_config(llm: Llm) -> GatewayConfig:
    """The gateway's configuration exactly as the operator renders it for the stage."""
    pipeline = spec()
    where = Placement(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        upstream=f"http://127.0.0.1:{llm.port}",
        namespace="ns",
    )
    env = {
        item["name"]: item["value"]
        for item in gateway_args("chat", pipeline, pipeline.stages[0], PriceTable(), where).to_env()
    }
    config = parse_config([], env)
    return replace(config, health_interval_seconds=0.1, admin_listen=HostPort("127.0.0.1", 0))


async def ask(
    session: aiohttp.ClientSession, gateway: Gateway, body: Any, caller: str = "Bearer a"
) -> Any:
    url = f"http://127.0.0.1:{gateway.port}/"
    async with session.post(url, json=body, headers={"Authorization": caller}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def sample(gateway: Gateway, name: str, **labels: str) -> float:
    base = {"namespace": "ns", "pipeline": "chat", "stage": "llm"}
    return gateway.metrics.registry.get_sample_value(name, {**base, **labels}) or 0.0


async def test_concurrent_prompts_share_one_call_and_get_their_own_answers(llm: Llm) -> None:
    config = rendered_config(llm)
    assert config.pack is not None and config.pack.prompt_field == "question"
    gateway = Gateway(config)
    await gateway.start()
    try:
        deadline = time.monotonic() + 10
        while not gateway.ready:
            assert time.monotonic() < deadline, gateway.not_ready_reason
            await asyncio.sleep(0.01)
        llm.drop = {"q5"}
        async with aiohttp.ClientSession() as session:
            questions = [{"question": f"q{i}", "temperature": 0} for i in range(8)]
            answers = await asyncio.gather(*(ask(session, gateway, q) for q in questions))
        assert [a["answer"] for a in answers] == [f"re: q{i}" for i in range(8)]
        assert all(a["temperature"] == 0 for a in answers)
        # one packed call of 8, and q5 (left out of the packed answer) asked alone
        assert len(llm.prompts) == 2 and llm.prompts[1] == "q5"
        assert llm.prompts[0].startswith("Answer each:\nQ1: q0\nQ2: q1")
        assert sample(gateway, "penstock_stage_pack_items_sum") == 8
        assert sample(gateway, "penstock_stage_pack_fallbacks_total", reason="missing") == 1
        assert set(llm.callers) == {"Bearer a"}  # the caller's key headers reach the stage
        # Two callers at once: one packed call each, never one prompt for both.
        llm.prompts.clear()
        llm.callers.clear()
        async with aiohttp.ClientSession() as session:
            asked = [
                ask(session, gateway, {"question": f"{who}{i}"}, f"Bearer {who}")
                for i in range(3)
                for who in ("x", "y")
            ]
            answers = await asyncio.gather(*asked)
        assert [a["answer"] for a in answers] == [f"re: {w}{i}" for i in range(3) for w in "xy"]
        assert sorted(llm.callers) == ["Bearer x", "Bearer y"]
        for caller, prompt in zip(llm.callers, llm.prompts, strict=True):
            other = "y" if caller == "Bearer x" else "x"
            assert f"Q1: {caller[-1]}0" in prompt and other not in prompt.replace("Answer", "")
    finally:
        await gateway.stop()
