"""The throughput tuner end to end: real gateways under load, a real Prometheus scraping them,
the operator reading it and raising the HPA floor on the real control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ARTIFACTS, Cluster, OperatorProcess, free_port, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "bin" / "prometheus"
STAGE_SECONDS = 0.05
LOAD_SECONDS = 25


class Stage(BaseHTTPRequestHandler):
    """A real stage: 50 ms of work per request."""

    protocol_version = "HTTP/1.1"

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(b'{"ok": true}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(STAGE_SECONDS)
        self._reply(b'{"ok": true}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stage_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _start(args: list[str], log: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, stdout=(ARTIFACTS / log).open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _load(url: str, stop: threading.Event, same: bool = False) -> None:
    count = 0
    while not stop.is_set():
        # a count per thread (threads in step coalesce now and then); or one body, always shared
        body = json.dumps({"n": "same" if same else count}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        count += 1


def test_tuner_reads_prometheus_and_raises_the_hpa_floor(
    cluster: Cluster, operator: OperatorProcess, namespace: str, stage_url: str
) -> None:
    if not PROMETHEUS.exists():
        pytest.fail("bin/prometheus missing: run `make tools`")
    if os.environ.get("PENSTOCK_E2E_OPERATOR") == "in-cluster":
        pytest.skip("restarts the operator process with tuner flags")
    pipeline = {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "tuned"},
        "spec": {
            "stages": [
                {"name": "front", "image": "x/front:1", "scaling": {"maxReplicas": 8}},
                {
                    "name": "back",
                    "image": "x/back:1",
                    "dependsOn": ["front"],
                    "scaling": {"maxReplicas": 8},
                },
            ]
        },
    }
    assert cluster.apply(yaml.safe_dump(pipeline), namespace).returncode == 0
    processes: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    try:
        targets, admin = {}, {}
        for stage in ("front", "back"):
            port, admin[stage] = free_port(), free_port()
            targets[stage] = f"http://127.0.0.1:{port}/"
            processes.append(
                _start(
                    [
                        sys.executable,
                        "-m",
                        "penstock.cli",
                        "gateway",
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--admin-listen",
                        f"127.0.0.1:{admin[stage]}",
                        "--upstream",
                        stage_url,
                        "--pipeline",
                        "tuned",
                        "--stage",
                        stage,
                        "--namespace",
                        namespace,
                        "--hourly-cost",
                        "3.6",
                    ],
                    f"gateway-{stage}.log",
                )
            )
        for stage in admin:
            wait_for(
                lambda s=stage: _ok(f"http://127.0.0.1:{admin[s]}/ready"),
                timeout=60,
                what=f"gateway {stage}",
            )
        data = ARTIFACTS / f"prometheus-{namespace}"
        data.mkdir(parents=True, exist_ok=True)
        config = data / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "gateways",
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{p}" for p in admin.values()]}
                            ],
                        }
                    ],
                }
            )
        )
        prometheus_port = free_port()
        processes.append(
            _start(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                "prometheus.log",
            )
        )
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        wait_for(lambda: _ok(f"{prometheus}/-/ready"), timeout=60, what="Prometheus ready")
        pool = ThreadPoolExecutor(max_workers=11)
        for stage in ("front", "back"):
            for _ in range(4):
                pool.submit(_load, targets[stage], stop)
        for _ in range(3):  # identical concurrent requests: one stage call, the others saved
            pool.submit(_load, targets["back"], stop, True)

        def rate_seen() -> bool:
            query = "sum(rate(penstock_stage_requests_total[1m]))"
            result = _get(f"{prometheus}/api/v1/query?query={urllib.request.quote(query)}")["data"][
                "result"
            ]
            return bool(result) and float(result[0]["value"][1]) > 10

        wait_for(rate_seen, timeout=60, interval=1, what="request rates in Prometheus")
        operator.stop()
        operator.start("--prometheus-url", prometheus, "--tuner-interval-seconds", "2")

        def floor_raised() -> dict[str, Any] | None:
            hpa = cluster.get("hpa", "tuned-front", namespace) or {}
            if hpa.get("spec", {}).get("minReplicas", 1) < 2:
                return None
            return hpa

        hpa = wait_for(
            floor_raised, timeout=90, interval=1, what="the tuner to raise tuned-front's HPA floor"
        )
        assert hpa["spec"]["maxReplicas"] == 8

        def observed() -> dict[str, Any] | None:
            # The HPA is applied before the same reconcile writes the status: wait for it.
            status = (cluster.get("pipeline", "tuned", namespace) or {}).get("status", {})
            stages = {s["name"]: s for s in status.get("stages", [])}
            front = stages.get("front", {})
            return status if "observedRps" in front and "savings" in status else None

        status = wait_for(observed, timeout=30, interval=0.5, what="the tuner's figures in status")
        front = next(s for s in status["stages"] if s["name"] == "front")
        assert front["observedRps"] > 0  # averaged over 2m, most of which was idle
        assert front["recommendedReplicas"] >= 2
        assert status["criticalPath"] == ["front", "back"]
        # 50 ms per call at 3.6 USD/h: 5e-5 USD per request (less on back, where calls are shared)
        assert 1e-5 < float(front["costPerRequest"]) < 2e-4
        saved = {item["reason"]: item for item in status["savings"]["byReason"]}
        assert saved["coalesced"]["stageSecondsPerHour"] > 0
        assert float(saved["coalesced"]["usdPerHour"]) > 0
        back = next(s for s in status["stages"] if s["name"] == "back")
        assert float(back["savedHourlyCost"]) > 0
        metrics = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
        assert metrics["status"] == "True"
        events = [
            e for e in cluster.items("events", namespace) if e["reason"] == "RecommendationChanged"
        ]
        assert events
    finally:
        stop.set()
        for process in processes:
            _stop(process)
        operator.stop()
        operator.start()
