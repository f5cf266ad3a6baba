"""The tracing stack end to end with real processes: Jaeger v2 (built by `make tools`) as the
trace backend, the same binary running the collector configuration the operator renders, and
real gateway and router processes configured from the environment the operator renders.

The configurations run as rendered except for their listen addresses (free loopback ports
instead of 0.0.0.0) and the span-metrics flush interval (1 s instead of 15 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.api.validation import validate_document
from penstock.render import PipelineRef, RenderSettings, render_children
from penstock.render.collector import TracedPipeline, collector_config, render_collector
from tests.support import free_port, tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JAEGER = ROOT / "bin" / "jaeger"
HELM = ROOT / "bin" / "helm"
NAMESPACE = "search"

PIPELINE = f"""
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {{name: qa, namespace: {NAMESPACE}}}
spec:
  costCenter: search-team
  team: relevance
  output: answer
  tracing: {{enabled: true, samplingRatio: 1}}
  stages:
    - {{name: retrieve, image: example/retrieve:1, cost: {{hourlyRate: "3.60"}}}}
    - {{name: answer, image: example/answer:1, dependsOn: [retrieve], cost: {{hourlyRate: "7.20"}}}}
"""

STAGE_SERVER = """
import asyncio, json, sys
from aiohttp import web

async def main(ports):
    for name, port in ports.items():
        async def handle(request, name=name):
            body = await request.json()
            await asyncio.sleep(0.02)
            return web.json_response({"stage": name, "got": body})
        app = web.Application()
        app.router.add_post("/", handle)
        app.router.add_get("/healthz", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""


def http(url: str, body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def relisten(node: Any, ports: dict[str, int]) -> Any:
    """Replace every 0.0.0.0:<port> listen address with a free loopback port (same per port)."""
    if isinstance(node, dict):
        return {key: relisten(value, ports) for key, value in node.items()}
    if isinstance(node, list):
        return [relisten(value, ports) for value in node]
    if isinstance(node, str) and node.startswith("0.0.0.0:"):
        port = node.removeprefix("0.0.0.0:")
        ports.setdefault(port, free_port())
        return f"127.0.0.1:{ports[port]}"
    return node


def local_telemetry(config: dict[str, Any]) -> dict[str, Any]:
    """The collector's own metrics on a free loopback port too."""
    for reader in config["service"]["telemetry"]["metrics"]["readers"]:
        reader["pull"]["exporter"]["prometheus"].update(host="127.0.0.1", port=free_port())
    return config


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.running.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                log = (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} exited with {process.returncode}:\n{log}")

    def stop(self) -> None:
        for _, process in reversed(self.running):
            process.terminate()
        for _, process in self.running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    tool("jaeger")  # fails naming how to get it
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def validate(config: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(JAEGER), "validate", f"--config={path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def chart_jaeger_config() -> dict[str, Any]:
    rendered = subprocess.run(
        [str(HELM), "template", "t", str(ROOT / "charts" / "penstock"), "--set",
         "jaeger.enabled=true", "--show-only", "templates/jaeger.yaml"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    config_map = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ConfigMap")
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


PIPELINES = [
    TracedPipeline(PipelineRef("qa", NAMESPACE, "uid-qa"), "search-team", "relevance"),
    TracedPipeline(PipelineRef("chat", NAMESPACE, "uid-chat"), "chat-team", "assistants"),
]


@pytest.mark.parametrize("backend", [None, "http://jaeger.observability:4318"])
def test_rendered_collector_config_is_accepted_by_a_real_collector(
    tmp_path: Path, backend: str | None
) -> None:
    result = validate(collector_config(NAMESPACE, PIPELINES, backend), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_what_a_collector_would_reject(tmp_path: Path) -> None:
    config = collector_config(NAMESPACE, PIPELINES, None)
    config["processors"]["attributes/qa"]["include"]["match_typo"] = "strict"
    result = validate(config, tmp_path)
    assert result.returncode != 0
    assert "match_typo" in result.stdout + result.stderr


def test_chart_jaeger_config_is_accepted_by_jaeger(tmp_path: Path) -> None:
    result = validate(chart_jaeger_config(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _tags(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in items}


@dataclass(frozen=True)
class Stack:
    query: str  # Jaeger's query API
    router: str  # the router's serving URL
    collector_ports: dict[str, int]  # rendered port -> the loopback port it listens on


def start_stack(processes: Processes, tmp_path: Path) -> Stack:
    """Jaeger, the namespace's collector, stage servers, their gateways and the router of
    PIPELINE, each as rendered and each a process; returns once the router answers."""
    doc = yaml.safe_load(PIPELINE)
    spec = validate_document(doc).spec
    assert spec is not None
    ref = PipelineRef("qa", NAMESPACE, "uid-qa")
    manifests = render_children(ref, spec, RenderSettings(otlp_endpoint=None))

    # Jaeger: the chart's all-in-one configuration.
    jaeger_ports: dict[str, int] = {}
    jaeger_config = local_telemetry(relisten(chart_jaeger_config(), jaeger_ports))
    (tmp_path / "jaeger.yaml").write_text(yaml.safe_dump(jaeger_config))
    processes.start("jaeger", [str(JAEGER), f"--config={tmp_path / 'jaeger.yaml'}"])
    query = f"http://127.0.0.1:{jaeger_ports['16686']}"

    # The namespace's collector as the operator renders it, exporting to that Jaeger.
    traced = [TracedPipeline.of(ref, spec)]
    settings = RenderSettings(otlp_endpoint=f"http://127.0.0.1:{jaeger_ports['4318']}")
    config_map = render_collector(NAMESPACE, traced, settings)[0]
    collector_ports: dict[str, int] = {}
    config = local_telemetry(
        relisten(yaml.safe_load(config_map["data"]["collector.yaml"]), collector_ports)
    )
    config["connectors"]["spanmetrics"]["metrics_flush_interval"] = "1s"
    (tmp_path / "collector.yaml").write_text(yaml.safe_dump(config))
    processes.start("collector", [str(JAEGER), f"--config={tmp_path / 'collector.yaml'}"])
    collector_otlp = f"http://127.0.0.1:{collector_ports['4318']}"

    # Stage servers, and a gateway process per stage from the rendered container env.
    stage_ports = {"retrieve": free_port(), "answer": free_port()}
    processes.start("stages", [sys.executable, "-c", STAGE_SERVER, json.dumps(stage_ports)])
    gateway_urls: dict[str, str] = {}
    admin_urls: list[str] = []
    for stage, stage_port in stage_ports.items():
        deployment = next(
            m
            for m in manifests
            if m["kind"] == "Deployment" and m["metadata"]["name"] == f"qa-{stage}"
        )
        pod = deployment["spec"]["template"]["spec"]
        env = _env(next(c for c in pod["containers"] if c["name"] == "gateway"))
        assert (
            env["PENSTOCK_GATEWAY_OTLP_ENDPOINT"]
            == f"http://penstock-otel-collector.{NAMESPACE}.svc:4318"
        )
        listen, admin = free_port(), free_port()
        env |= {
            "PENSTOCK_GATEWAY_LISTEN": f"127.0.0.1:{listen}",
            "PENSTOCK_GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            "PENSTOCK_GATEWAY_UPSTREAM": f"http://127.0.0.1:{stage_port}",
            "PENSTOCK_GATEWAY_OTLP_ENDPOINT": collector_otlp,
        }
        if stage == "answer":
            # A stage mislabelling its cost center is corrected by the collector.
            env["PENSTOCK_GATEWAY_COST_CENTER"] = "mislabelled"
        processes.start(f"gateway-{stage}", ["penstock", "gateway"], env)
        gateway_urls[stage] = f"http://127.0.0.1:{listen}"
        admin_urls.append(f"http://127.0.0.1:{admin}/ready")

    # The router from its rendered env and the rendered topology.
    router = next(
        m for m in manifests if m["metadata"]["name"] == "qa-router" and m["kind"] == "Deployment"
    )
    topology = next(m for m in manifests if m["kind"] == "ConfigMap")
    (tmp_path / "topology.json").write_text(topology["data"]["topology.json"])
    env = _env(router["spec"]["template"]["spec"]["containers"][0])
    router_port = free_port()
    env |= {
        "PENSTOCK_ROUTER_LISTEN": f"127.0.0.1:{router_port}",
        "PENSTOCK_ROUTER_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "PENSTOCK_ROUTER_TOPOLOGY": str(tmp_path / "topology.json"),
        "PENSTOCK_ROUTER_STAGE_URL": ",".join(f"{s}={u}" for s, u in gateway_urls.items()),
        "PENSTOCK_ROUTER_OTLP_ENDPOINT": collector_otlp,
    }
    processes.start("router", ["penstock", "router"], env)

    def all_ready() -> bool:
        processes.check_alive()
        urls = [
            *admin_urls,
            f"http://127.0.0.1:{collector_ports['13133']}/status",
            f"{query}/api/services",
        ]
        return all(http(url)[0] == 200 for url in urls)

    wait_for("gateways, collector and Jaeger to be ready", all_ready)
    _, body = wait_for(
        "the router to answer",
        lambda: (lambda r: r if r[0] == 200 else None)(
            http(f"http://127.0.0.1:{router_port}/", b'{"q": "hi"}')
        ),
    )
    assert json.loads(body)["stage"] == "answer"
    return Stack(query, f"http://127.0.0.1:{router_port}/", collector_ports)


def test_a_request_through_real_gateways_becomes_one_trace_in_jaeger(
    processes: Processes, tmp_path: Path
) -> None:
    stack = start_stack(processes, tmp_path)
    query, collector_ports = stack.query, stack.collector_ports

    def trace() -> dict[str, Any] | None:
        processes.check_alive()
        code, data = http(f"{query}/api/traces?service=qa.router&limit=5")
        if code != 200:
            return None
        for candidate in json.loads(data)["data"] or []:
            services = {p["serviceName"] for p in candidate["processes"].values()}
            if {"qa.router", "qa.retrieve", "qa.answer"} <= services:
                return dict(candidate)
        return None

    found = wait_for("the trace in Jaeger", trace)
    assert len({span["traceID"] for span in found["spans"]}) == 1
    gateway_spans: dict[str, dict[str, Any]] = {}
    for span in found["spans"]:
        tags = _tags(span["tags"])
        process = found["processes"][span["processID"]]
        resource = _tags(process["tags"])
        assert resource["penstock.pipeline"] == "qa"
        # the resource attributes the operator renders (OTEL_RESOURCE_ATTRIBUTES)
        assert (resource["penstock.team"], resource["k8s.namespace.name"]) == (
            "relevance",
            NAMESPACE,
        )
        # Stamped by the collector from the Pipeline spec on every span.
        assert tags["penstock.cost_center"] == "search-team", span["operationName"]
        assert tags["penstock.team"] == "relevance"
        assert tags["k8s.namespace.name"] == NAMESPACE
        if process["serviceName"] in ("qa.retrieve", "qa.answer") and "penstock.cost.usd" in tags:
            gateway_spans[tags["penstock.stage"]] = tags
    assert set(gateway_spans) == {"retrieve", "answer"}
    for stage, rate in (("retrieve", 3.60), ("answer", 7.20)):
        cost = float(gateway_spans[stage]["penstock.cost.usd"])
        # hourly rate / 3600 * seconds held: the stage sleeps 20 ms, so at least that long
        assert rate / 3600 * 0.02 <= cost < rate / 3600 * 5, (stage, cost)

    def span_metrics() -> str | None:
        code, data = http(f"http://127.0.0.1:{collector_ports['8889']}/metrics")
        text = data.decode()
        return text if code == 200 and 'penstock_stage="answer"' in text else None

    metrics = wait_for("span metrics from the collector", span_metrics)
    calls = [line for line in metrics.splitlines() if line.startswith("penstock_span_calls_total{")]
    assert any(
        'penstock_cost_center="search-team"' in line and 'penstock_stage="retrieve"' in line
        for line in calls
    ), "\n".join(calls)
