"""The Prometheus server built by `make tools` scrapes gateway-style metrics and answers rate() queries.

The throughput tuner's integration tests read request rates from a real Prometheus; this
test checks the pinned bin/prometheus end to end: it scrapes a local exporter every second
and `rate(penstock_stage_requests_total[10s])` becomes positive through the HTTP API.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from tests.support import free_port, tool

pytestmark = pytest.mark.integration

QUERY = "rate(penstock_stage_requests_total[10s])"


@pytest.fixture
def exporter() -> Iterator[str]:
    """A local HTTP server exposing a gateway-like request counter that keeps increasing."""
    registry = CollectorRegistry()
    requests = Counter(
        "penstock_stage_requests_total",
        "Requests through the stage gateway, by outcome",
        ["namespace", "pipeline", "stage", "outcome"],
        registry=registry,
    ).labels(namespace="demo", pipeline="rag", stage="embed", outcome="ok")

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.1):
            requests.inc(5)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=traffic, daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: str) -> Iterator[str]:
    """bin/prometheus on a free loopback port, scraping the exporter every second."""
    binary = tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: penstock-gateway\n"
        "    static_configs:\n"
        f"      - targets: ['{exporter}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{_tail(tmp_path)}")
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready within 60 s:\n{_tail(tmp_path)}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _tail(tmp_path: Path) -> str:
    lines = (tmp_path / "prometheus.log").read_text(errors="replace").splitlines()
    return "\n".join(lines[-30:])


def _query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        payload = json.load(resp)
    assert payload["status"] == "success", payload
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def test_rate_of_scraped_gateway_counter_becomes_positive(prometheus: str) -> None:
    deadline = time.monotonic() + 60
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = _query(prometheus, QUERY)
        if result and float(result[0]["value"][1]) > 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{QUERY} never became positive; last result: {result}")
    labels = result[0]["metric"]
    assert labels["namespace"] == "demo"
    assert labels["pipeline"] == "rag"
    assert labels["stage"] == "embed"
    assert labels["outcome"] == "ok"
    assert labels["job"] == "penstock-gateway"
    # ~50 requests/s are generated; allow wide slack for a loaded machine.
    assert 5 < float(result[0]["value"][1]) < 500
