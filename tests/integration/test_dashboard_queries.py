"""Every query of the shipped Grafana dashboard, asked of a real Prometheus that scraped real
Penstock components, answers a non-empty vector of finite numbers.

What runs (all on 127.0.0.1): three gateways in front of stage servers of their own (``embed``:
cached in a real redis-server, coalescing, reporting token usage; ``rerank``: batching, no
cache, no tokens, as a stage that reports none; ``answer``'s variant ``light`` of a cascade), a router sending the pipeline ``rag`` through
both, the operator's metrics (the status figures of a Pipeline, the reconcile counters) from the
default prometheus_client registry, and bin/prometheus scraping the four every second. Traffic
keeps every series moving (cache hits after a real answer, coalesced bursts, batches of two
sizes, so all four saving reasons but ``semantic`` count) while each panel's expression is
queried with the dashboard's variables set to "All" (``.*``); a query that stays empty, fails,
or answers NaN or ±Inf (a ratio over a stage without that feature) fails the test naming its
panel.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from penstock.api.status import PipelineStatus
from penstock.contract.topology import StageRoute, Topology, VariantRoute
from penstock.controller import metrics as operator_metrics
from penstock.dataplane.flags import HostPort
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.router import Router, RouterConfig
from tests.support import RedisServer, free_port, tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "penstock" / "files" / "dashboards" / "penstock.json"
# A namespace of its own: other tests of the same process may leave operator series behind in
# the default registry (finite figures of other pipelines, which the queries may well see too).
NAMESPACE, PIPELINE, COST_CENTER = "dashboard-queries", "rag", "search-team"
# What Grafana puts in for the variables: "All" is the variables' allValue, and the rate window
# is several 1 s scrapes long (Grafana's $__rate_interval is at least 4 scrape intervals).
VARIABLES = {
    "namespace": ".*",
    "pipeline": ".*",
    "cost_center": ".*",
    "__rate_interval": "15s",
}
BATCH_SECONDS = 0.05  # a batch takes this long whatever its size: batching saves time
USAGE = "input_tokens=3, output_tokens=5"
DEADLINE_SECONDS = 90.0  # for every query to answer; about 10 s on an idle machine
MAX_ROUNDS = 1000  # of traffic, each at least 0.3 s long: the bound if cancelling failed


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"the dashboard uses a variable ${name} this test does not set"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries() -> list[tuple[str, str]]:
    """(panel id, title and refId, PromQL ready to run) for every target of every panel."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]  # a collapsed row holds its panels
    return [
        (f"panel {panel['id']} {panel['title']!r} ({target['refId']})", substitute(target["expr"]))
        for panel in panels
        for target in panel.get("targets", [])
    ]


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable name, label, series selector) of each label_values() variable."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found = []
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if isinstance(text, str) and text.startswith("label_values("):
            selector, _, label = (
                text.removeprefix("label_values(").removesuffix(")").rpartition(",")
            )
            found.append((variable["name"], label.strip(), substitute(selector)))
    return found


# --------------------------------------------------------------------------- what is scraped


class StageServer:
    """A stage by the HTTP stage contract: POST / (echo), POST /batch, GET /healthz.

    ``{"sleep": s}`` in a body makes its call take s seconds (so identical requests overlap and
    coalesce); with ``usage`` every answer of POST / reports tokens in X-Penstock-Usage.
    """

    def __init__(self, usage: str | None) -> None:
        self.usage = usage
        self.batch_sizes: list[int] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def root(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict) and "sleep" in body:
            await asyncio.sleep(float(body["sleep"]))
        headers = {"X-Penstock-Usage": self.usage} if self.usage else {}
        return web.json_response({"echo": body}, headers=headers)

    async def batch(self, request: web.Request) -> web.Response:
        items = await request.json()
        self.batch_sizes.append(len(items))
        await asyncio.sleep(BATCH_SECONDS)
        return web.json_response([{"echo": item} for item in items])

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.root)
        app.router.add_post("/batch", self.batch)
        app.router.add_get("/healthz", self.healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def gateway(stage_name: str, stage: StageServer, **options: Any) -> AsyncIterator[Gateway]:
    config = GatewayConfig(
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        upstream=stage.url,
        pipeline=PIPELINE,
        stage=stage_name,
        namespace=NAMESPACE,
        cost_center=COST_CENTER,
        timeout_seconds=5.0,
        health_interval_seconds=0.1,
        **options,
    )
    server = Gateway(config)
    await server.start()
    try:
        deadline = time.monotonic() + 10
        while not server.ready:
            assert time.monotonic() < deadline, server.not_ready_reason
            await asyncio.sleep(0.02)
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def router(
    embed: Gateway, rerank: Gateway, light: Gateway, heavy_url: str
) -> AsyncIterator[Router]:
    variants = (
        VariantRoute("light", f"http://127.0.0.1:{light.port}"),
        VariantRoute("heavy", heavy_url),
    )
    topology = Topology(
        pipeline=PIPELINE,
        namespace=NAMESPACE,
        output="answer",
        stages={
            "embed": StageRoute("embed", f"http://127.0.0.1:{embed.port}"),
            "rerank": StageRoute(
                "rerank", f"http://127.0.0.1:{rerank.port}", depends_on=("embed",)
            ),
            # A cascade whose light variant (behind its own gateway) is always confident.
            "answer": StageRoute("answer", "", depends_on=("rerank",), variants=variants),
        },
    )
    server = Router(
        RouterConfig(
            listen=HostPort("127.0.0.1", 0),
            topology=topology,
            admin_listen=HostPort("127.0.0.1", 0),
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextmanager
def operator_metrics_server() -> Iterator[str]:
    """The operator's metrics as its /metrics serves them (the default registry), after the
    status figures of a reconciled Pipeline were exported."""
    status = PipelineStatus.model_validate(
        {
            "stages": [
                {
                    "name": name,
                    "hourlyCost": cost,
                    "desiredReplicas": 2,
                    "readyReplicas": 2,
                    "utilization": utilization,
                    "recommendedReplicas": 3,
                }
                for name, cost, utilization in (("embed", "3.6", 0.4), ("rerank", "7.2", 0.9))
            ],
            "bottleneck": "rerank",
        }
    )
    operator_metrics.export_status(NAMESPACE, PIPELINE, COST_CENTER, status)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(REGISTRY)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    # A thread of its own: the scrape must not wait for the test's event loop.
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        operator_metrics.forget_pipeline(NAMESPACE, PIPELINE)


def reconciled() -> None:
    """What one reconcile records (controller/reconcile.py), without a Kubernetes API."""
    operator_metrics.RECONCILE_TOTAL.labels(result="unchanged").inc()
    operator_metrics.RECONCILE_DURATION.observe(0.02)


@asynccontextmanager
async def prometheus(
    tmp_path: Path, session: aiohttp.ClientSession, targets: dict[str, str]
) -> AsyncIterator[str]:
    """bin/prometheus on a free loopback port, scraping each target every second."""
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n{jobs}"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            cwd=tmp_path,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.returncode is None, f"prometheus exited {process.returncode}:\n{tail()}"
            try:
                async with session.get(f"{base}/-/ready") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready in 60 s:\n{tail()}"
            await asyncio.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


# --------------------------------------------------------------------------- traffic


async def _post(session: aiohttp.ClientSession, port: int, body: Any) -> None:
    async with session.post(f"http://127.0.0.1:{port}/", json=body) as response:
        await response.read()
        assert response.status == 200, (port, body, response.status)


async def traffic(
    session: aiohttp.ClientSession, pipeline: Router, embed: Gateway, rerank: Gateway
) -> None:
    """Rounds of requests until cancelled (or MAX_ROUNDS, well past the deadline); each round
    moves every series the dashboard reads."""
    for round_number in range(1, MAX_ROUNDS + 1):
        # Through the router: the same input again and again (an embed cache hit from round two
        # on, after a real answer) and a new one (a miss that the stage answers, with tokens).
        # Each reaches rerank alone: batches of one item.
        for text in ("hot", f"cold {round_number}"):
            await _post(session, pipeline.port, {"q": text})
        # Identical requests at once: one stage call, three coalesced.
        slow = {"burst": round_number, "sleep": 0.1}
        await asyncio.gather(*(_post(session, embed.port, slow) for _ in range(4)))
        # Four items at once: one batch of four beside the batches of one above, the two sizes
        # the batching saving is fitted from.
        await asyncio.gather(
            *(_post(session, rerank.port, {"item": [round_number, i]}) for i in range(4))
        )
        reconciled()
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- the test


def problem(payload: dict[str, Any]) -> str | None:
    """Why an instant query's answer is not a non-empty vector of finite numbers, or None."""
    if payload.get("status") != "success":
        return f"status {payload.get('status')}: {payload.get('error')}"
    data = payload["data"]
    if data["resultType"] != "vector":
        return f"a {data['resultType']}, not a vector"
    if not data["result"]:
        return "empty"
    bad = [s for s in data["result"] if not math.isfinite(float(s["value"][1]))]
    if bad:
        return "not finite: " + ", ".join(f"{s['metric']} = {s['value'][1]}" for s in bad)
    return None


async def instant(session: aiohttp.ClientSession, base: str, query: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": query}) as response:
        payload: dict[str, Any] = await response.json()
        return payload


async def test_every_dashboard_query_answers_finite_values(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    queries = panel_queries()
    assert len(queries) > 25  # every panel's targets, not a parsing accident
    assert len(dict(queries)) == len(queries)
    embed_stage, rerank_stage = StageServer(USAGE), StageServer(None)
    answer_stage = StageServer(None)
    await embed_stage.start()
    await rerank_stage.start()
    await answer_stage.start()
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            gateway("embed", embed_stage, redis_url=redis_server.url, hourly_cost=3.6) as embed,
            gateway(
                "rerank",
                rerank_stage,
                hourly_cost=7.2,
                batch_path="/batch",
                batch_max_size=8,
                batch_max_latency_ms=20,
            ) as rerank,
            gateway("answer", answer_stage, hourly_cost=1.8, variant="light") as light,
            router(embed, rerank, light, answer_stage.url) as pipeline,
        ):
            with operator_metrics_server() as operator_target:
                targets = {
                    "penstock-gateway-embed": f"127.0.0.1:{embed.admin_port}",
                    "penstock-gateway-rerank": f"127.0.0.1:{rerank.admin_port}",
                    "penstock-gateway-answer-light": f"127.0.0.1:{light.admin_port}",
                    "penstock-router": f"127.0.0.1:{pipeline.admin_port}",
                    "penstock-operator": operator_target,
                }
                async with prometheus(tmp_path, session, targets) as base:
                    load = asyncio.get_running_loop().create_task(
                        traffic(session, pipeline, embed, rerank)
                    )
                    try:
                        problems = await poll(session, base, queries, load)
                        labels = await variable_values(session, base)
                        reasons = await saved_reasons(session, base)
                    finally:
                        load.cancel()
                        await asyncio.gather(load, return_exceptions=True)
    finally:
        await embed_stage.stop()
        await rerank_stage.stop()
        await answer_stage.stop()
    assert not problems, "dashboard panels without a finite answer:\n" + "\n".join(
        f"{where}: {why}\n    {query}" for where, (query, why) in sorted(problems.items())
    )
    # The variables offer this pipeline (with "All" chosen for the ones before them).
    expected = {"namespace": NAMESPACE, "cost_center": COST_CENTER, "pipeline": PIPELINE}
    assert set(labels) == set(expected)
    for name, value in expected.items():
        assert value in labels[name], (name, labels[name])
    assert set(rerank_stage.batch_sizes) >= {1, 4}
    # The Efficiency row saw every saving this traffic makes, each priced above zero.
    assert reasons >= {"cache", "coalesced", "batching"}, reasons


async def poll(
    session: aiohttp.ClientSession,
    base: str,
    queries: list[tuple[str, str]],
    load: asyncio.Task[None],
) -> dict[str, tuple[str, str]]:
    """Ask every query until each has answered well once (rates need two scrapes with traffic
    between them), or the deadline: then what each query still lacks."""
    pending = {where: (query, "never asked") for where, query in queries}
    deadline = time.monotonic() + DEADLINE_SECONDS
    while pending and time.monotonic() < deadline:
        if load.done():
            load.result()  # the traffic failed: its error is the test's
            raise AssertionError("the traffic stopped")
        for where, (query, _) in list(pending.items()):
            why = problem(await instant(session, base, query))
            if why is None:
                del pending[where]
            else:
                pending[where] = (query, why)
        await asyncio.sleep(1.0)
    return pending


async def saved_reasons(session: aiohttp.ClientSession, base: str) -> set[str]:
    """The reasons with a saving in USD so far (polled: the last one may be a scrape away)."""
    query = f'sum by (reason) (penstock_stage_saved_usd_total{{namespace="{NAMESPACE}"}}) > 0'
    deadline = time.monotonic() + 20
    while True:
        payload = await instant(session, base, query)
        reasons = {sample["metric"]["reason"] for sample in payload["data"]["result"]}
        if {"cache", "coalesced", "batching"} <= reasons or time.monotonic() > deadline:
            return reasons
        await asyncio.sleep(1.0)


async def variable_values(session: aiohttp.ClientSession, base: str) -> dict[str, list[str]]:
    """Each label_values() variable's values, asked of Prometheus as Grafana asks them."""
    values: dict[str, list[str]] = {}
    for name, label, selector in variable_queries():
        async with session.get(
            f"{base}/api/v1/label/{label}/values", params={"match[]": selector}
        ) as response:
            payload = await response.json()
        assert payload["status"] == "success", (name, payload)
        values[name] = payload["data"]
    return values


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"status": "error", "error": "parse error"}, "status error: parse error"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "empty"),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]},
            },
            "not finite: {} = NaN",
        ),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "+Inf"]}]},
            },
            "not finite: {} = +Inf",
        ),
        ({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}, "a scalar"),
    ],
)
def test_the_check_rejects_errors_empty_and_non_finite_answers(
    payload: dict[str, Any], why: str
) -> None:
    found = problem(payload)
    assert found is not None and found.startswith(why)


def test_a_vector_of_numbers_passes() -> None:
    sample = {"metric": {"stage": "embed"}, "value": [0, "0.25"]}
    assert (
        problem({"status": "success", "data": {"resultType": "vector", "result": [sample]}}) is None
    )
