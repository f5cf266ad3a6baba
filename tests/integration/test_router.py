"""Integration tests: ``penstock router`` against real stage servers on 127.0.0.1.

Each stage is a small aiohttp app on a free port that records its own start and end times and the
exact body it received; the router runs in-process on its own ports (and once as a subprocess
through ``main``). Overlap, skipping, envelopes and streaming are checked from the stages' own
records.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from penstock.contract.topology import StageRoute, Topology
from penstock.contract.wire import PROFILE_HEADER
from penstock.dataplane.gateway.config import HostPort
from penstock.dataplane.router import Router, RouterConfig
from tests.support import ScriptServer, free_port

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Call:
    stage: str
    body: Any
    headers: dict[str, str]
    start: float
    end: float = 0.0


@dataclass
class Stages:
    """Real HTTP stage servers; every call is recorded by the stage itself."""

    calls: list[Call] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)

    def called(self, stage: str) -> list[Call]:
        return [call for call in self.calls if call.stage == stage]

    async def add(
        self,
        name: str,
        *,
        sleep: float = 0.0,
        status: int = 200,
        raw: bytes | None = None,
        chunks: list[bytes] | None = None,
        gap: float = 0.0,
        cache: str | None = None,
        answer_headers: dict[str, str] | None = None,
    ) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            call = Call(name, await request.json(), dict(request.headers), time.perf_counter())
            self.calls.append(call)
            try:
                await asyncio.sleep(sleep)
                headers = {"X-Penstock-Cache": cache} if cache else {}
                headers.update(answer_headers or {})
                if chunks is not None:
                    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                    await response.prepare(request)
                    for index, chunk in enumerate(chunks):
                        if index:
                            await asyncio.sleep(gap)
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                if raw is not None:
                    return web.Response(body=raw, status=status, content_type="application/json")
                return web.json_response(
                    {"stage": name, "got": call.body}, status=status, headers=headers
                )
            finally:
                call.end = time.perf_counter()

        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def stages() -> AsyncIterator[Stages]:
    servers = Stages()
    yield servers
    await servers.close()


def topology(
    output: str,
    routes: list[StageRoute],
    budget_ms: int | None = None,
) -> Topology:
    return Topology(
        pipeline="rag",
        namespace="search",
        output=output,
        stages={route.name: route for route in routes},
        latency_budget_ms=budget_ms,
    )


@asynccontextmanager
async def running(topo: Topology) -> AsyncIterator[Router]:
    config = RouterConfig(
        listen=HostPort("127.0.0.1", 0), topology=topo, admin_listen=HostPort("127.0.0.1", 0)
    )
    router = Router(config)
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


async def post(
    router: Router, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, float]:
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{router.port}/", json=body, headers=headers or {}
        ) as response,
    ):
        data = await response.json()
        return response.status, data, time.perf_counter() - started


async def diamond(stages: Stages, sleep: float = 0.2) -> Topology:
    return topology(
        "answer",
        [
            StageRoute("retrieve", await stages.add("retrieve", sleep=sleep)),
            StageRoute("embed", await stages.add("embed", sleep=sleep, cache="hit")),
            StageRoute("audit", await stages.add("audit")),  # nothing needs it
            StageRoute(
                "answer",
                await stages.add("answer", sleep=0.01),
                depends_on=("retrieve", "embed"),
            ),
        ],
    )


async def test_parallel_stages_overlap_and_unneeded_is_skipped(stages: Stages) -> None:
    async with running(await diamond(stages)) as router:
        status, data, elapsed = await post(router, {"q": "penstock"})
    assert status == 200
    retrieve, embed = stages.called("retrieve")[0], stages.called("embed")[0]
    # Both ran at the same time, by their own clocks.
    assert retrieve.start < embed.end and embed.start < retrieve.end
    assert abs(retrieve.start - embed.start) < 0.05
    assert stages.called("audit") == []
    answer = stages.called("answer")[0]
    assert answer.start >= max(retrieve.end, embed.end)
    assert elapsed < 0.2 * 2  # parallel, not 0.4 s in sequence
    assert data["stage"] == "answer"


async def test_envelope_contents_exact(stages: Stages) -> None:
    async with running(await diamond(stages, sleep=0.0)) as router:
        status, data, _ = await post(router, {"q": "penstock", "k": [1, 2]})
    assert status == 200
    query = {"q": "penstock", "k": [1, 2]}
    assert stages.called("retrieve")[0].body == query
    assert stages.called("embed")[0].body == query
    assert stages.called("answer")[0].body == {
        "input": query,
        "retrieve": {"stage": "retrieve", "got": query},
        "embed": {"stage": "embed", "got": query},
    }
    assert data == {"stage": "answer", "got": stages.called("answer")[0].body}


async def test_budget_504_names_the_slow_stage(stages: Stages) -> None:
    topo = topology(
        "answer",
        [
            StageRoute("fast", await stages.add("fast", sleep=0.01)),
            StageRoute("slow", await stages.add("slow", sleep=3.0)),
            StageRoute("answer", await stages.add("answer"), depends_on=("fast", "slow")),
        ],
        budget_ms=200,
    )
    async with running(topo) as router:
        status, data, elapsed = await post(router, {})
    assert status == 504
    assert data["stage"] == "slow"
    assert "latency budget of 200 ms" in data["error"] and "'slow'" in data["error"]
    assert elapsed < 1.0
    assert stages.called("answer") == []


async def test_stage_timeout_seconds_504(stages: Stages) -> None:
    topo = topology(
        "slow", [StageRoute("slow", await stages.add("slow", sleep=3.0), timeout_seconds=0.2)]
    )
    async with running(topo) as router:
        status, data, elapsed = await post(router, {})
    assert status == 504 and data["stage"] == "slow"
    assert "timeoutSeconds" in data["error"]
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("status", "given", "retry_after"),
    [
        (429, {"Retry-After": "7"}, "7"),
        (503, {}, "1"),
        (503, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, "1"),
    ],
)
async def test_an_overloaded_stage_is_a_503_with_retry_after(
    stages: Stages, status: int, given: dict[str, str], retry_after: str
) -> None:
    """Backpressure reaches the client (penstock batch backs off on it), never a 502."""
    url = await stages.add("busy", status=status, answer_headers=given)
    async with (
        running(topology("busy", [StageRoute("busy", url)])) as router,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}/", json={}) as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"] == retry_after
        body = await response.json()
    assert body["stage"] == "busy"
    assert f"answered HTTP {status}" in body["error"]


@pytest.mark.parametrize("failure", ["status", "invalid-json", "unreachable"])
async def test_failing_stage_502_names_it_and_cancels_the_rest(
    stages: Stages, failure: str
) -> None:
    if failure == "status":
        url = await stages.add("broken", status=500)
    elif failure == "invalid-json":
        url = await stages.add("broken", raw=b"{not json")
    else:  # refused until 80% of its timeoutSeconds ran out: it may be restarting
        url = f"http://127.0.0.1:{free_port()}"
    timeout = 1.0 if failure == "unreachable" else 30.0
    topo = topology(
        "answer",
        [
            StageRoute("broken", url, timeout_seconds=timeout),
            StageRoute("slow", await stages.add("slow", sleep=2.0)),
            StageRoute("answer", await stages.add("answer"), depends_on=("broken", "slow")),
        ],
    )
    async with running(topo) as router:
        status, data, elapsed = await asyncio.wait_for(post(router, {"q": 1}), 3)
        await asyncio.sleep(0.05)
    assert status == 502
    assert data["stage"] == "broken" and "'broken'" in data["error"]
    assert data["pipeline"] == "rag"
    if failure == "unreachable":
        assert "ConnectionRefused" in data["error"]
        assert elapsed >= 0.7  # the router kept trying for 0.8 s
    assert elapsed < 1.9  # the slow stage (2 s) was cancelled, not waited for
    assert stages.called("answer") == []


async def test_bad_request_body_400(stages: Stages) -> None:
    topo = topology("a", [StageRoute("a", await stages.add("a"))])
    async with (
        running(topo) as router,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}/", data=b"{nope") as response,
    ):
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]
    assert stages.calls == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"q": "hi"}'.encode("utf-16"), "UTF-16 byte order mark"),
        ('{"q": "hi"}'.encode("utf-32-le"), "not valid JSON"),
        (b'\xef\xbb\xbf{"q": 1}', "byte order mark"),
        (b'{"q": NaN}', "NaN"),
        (b'{"q": [Infinity]}', "Infinity"),
        (b'{"q": 1e999}', "out of the range"),
        (b'{"q": "\\ud800"}', "lone surrogate"),
        (b'{"q": 1, "q": 2}', "more than once"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper"),
        (b'["\x80abc"]', "not UTF-8"),
    ],
)
async def test_only_strict_utf8_json_is_taken(stages: Stages, body: bytes, message: str) -> None:
    topo = topology("a", [StageRoute("a", await stages.add("a"))])
    async with (
        running(topo) as router,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}/", data=body) as response,
    ):
        assert response.status == 400
        assert response.content_type == "application/json"
        answer = await response.json()
        assert message in answer["error"] and answer["error"].startswith("request body ")
        assert answer["pipeline"] == "rag"
    assert stages.calls == []


async def test_streaming_output_passes_chunks_through(stages: Stages) -> None:
    chunks = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    topo = topology(
        "compose",
        [
            StageRoute("retrieve", await stages.add("retrieve")),
            StageRoute(
                "compose",
                await stages.add("compose", chunks=chunks, gap=0.3),
                depends_on=("retrieve",),
                stream=True,
            ),
        ],
    )
    arrivals: list[tuple[float, bytes]] = []
    async with (
        running(topo) as router,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{router.port}/", json={"q": 1}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        async for chunk in response.content.iter_any():
            arrivals.append((time.perf_counter(), chunk))
    compose = stages.called("compose")[0]
    assert b"".join(chunk for _, chunk in arrivals) == b"".join(chunks)
    assert arrivals[0][0] < compose.end - 0.3  # the first chunk came before the stage finished
    assert compose.body == {"input": {"q": 1}, "retrieve": {"stage": "retrieve", "got": {"q": 1}}}


async def test_profile_header(stages: Stages) -> None:
    async with running(await diamond(stages, sleep=0.05)) as router:
        status, data, _ = await post(router, {"q": 1}, {PROFILE_HEADER: "1"})
        plain_status, plain, _ = await post(router, {"q": 1})
    assert status == 200 and plain_status == 200
    assert data["output"] == plain
    profile = data["profile"]
    by_name = {entry["name"]: entry for entry in profile["stages"]}
    assert set(by_name) == {"retrieve", "embed", "answer"}
    assert by_name["embed"]["cache"] == "hit" and by_name["retrieve"]["cache"] is None
    for entry in profile["stages"]:
        assert entry["end_ms"] >= entry["start_ms"] >= 0
        assert entry["duration_ms"] == pytest.approx(entry["end_ms"] - entry["start_ms"], abs=0.01)
    assert by_name["answer"]["start_ms"] >= by_name["embed"]["end_ms"]
    assert profile["critical_path"][-1] == "answer"
    assert profile["critical_path"][0] in ("retrieve", "embed")
    assert profile["total_ms"] >= by_name["answer"]["end_ms"]


async def test_metrics_and_probes(stages: Stages) -> None:
    topo = topology("a", [StageRoute("a", await stages.add("a", status=503))])
    async with running(topo) as router:
        await post(router, {})
        async with aiohttp.ClientSession() as session:
            admin = f"http://127.0.0.1:{router.admin_port}"
            async with session.get(admin + "/metrics") as response:
                text = await response.text()
            for path in ("/live", "/ready"):
                async with session.get(admin + path) as response:
                    assert response.status == 200
    assert (
        'penstock_pipeline_requests_total{namespace="search",outcome="stage_error",'
        'pipeline="rag"} 1.0' in text
    )
    assert (
        'penstock_pipeline_request_duration_seconds_count{namespace="search",pipeline="rag"} 1.0'
        in text
    )


async def test_traceparent_propagated_to_stages(stages: Stages) -> None:
    async with running(await diamond(stages, sleep=0.0)) as router:
        await post(router, {}, {"traceparent": TRACEPARENT})
    for call in stages.calls:
        assert call.headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]


# --------------------------------------------------------------------------- subprocess


@pytest.fixture
def stage_process() -> Iterator[str]:
    """A stage as a separate process: echoes {"stage": "echo", "got": body}."""
    code = textwrap.dedent(
        """
        import sys
        from aiohttp import web
        async def h(r):
            return web.json_response({"stage": "echo", "got": await r.json()})
        async def healthz(r):
            return web.Response(text="ok")
        app = web.Application(); app.router.add_post("/", h); app.router.add_get("/healthz", healthz)
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
        """
    )
    stage = ScriptServer(code)
    try:
        yield stage.url
    finally:
        stage.stop()


def test_main_subprocess_with_pipeline_file(tmp_path: Path, stage_process: str) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        textwrap.dedent(
            """
            apiVersion: penstock.dev/v1alpha1
            kind: Pipeline
            metadata: {name: demo, namespace: dev}
            spec:
              stages:
                - {name: echo, image: example/echo:1}
            """
        )
    )
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from penstock.dataplane.router import main; sys.exit(main())",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--pipeline",
            str(pipeline),
            "--stage-url",
            f"echo={stage_process}",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                request = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import urllib.request,sys;"
                        f"r=urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{port}/',"
                        "data=b'{\"x\": 1}', headers={'Content-Type': 'application/json'}));"
                        "sys.stdout.write(r.read().decode())",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                if request.returncode == 0:
                    assert json.loads(request.stdout) == {"stage": "echo", "got": {"x": 1}}
                    break
            except subprocess.TimeoutExpired:
                pass
            assert time.monotonic() < deadline, request.stderr
            time.sleep(0.2)
    finally:
        process.terminate()
        assert process.wait(10) == 0


async def test_spans_per_stage_when_tracing(stages: Stages) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    config = RouterConfig(
        listen=HostPort("127.0.0.1", 0),
        topology=await diamond(stages, sleep=0.0),
        admin_listen=HostPort("127.0.0.1", 0),
    )
    router = Router(config, span_exporter=exporter)
    await router.start()
    try:
        await post(router, {}, {"traceparent": TRACEPARENT})
    finally:
        await router.stop()  # flushes the batch processor
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"pipeline rag", "stage retrieve", "stage embed", "stage answer"} <= set(spans)
    trace_id = int(TRACEPARENT.split("-")[1], 16)
    root = spans["pipeline rag"]
    for name in ("retrieve", "embed", "answer"):
        span = spans[f"stage {name}"]
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and root.context is not None
        assert span.parent.span_id == root.context.span_id
        assert span.attributes is not None and span.attributes["penstock.stage"] == name
        call = stages.called(name)[0]
        assert call.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
