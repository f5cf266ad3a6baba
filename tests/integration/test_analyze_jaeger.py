"""``penstock analyze --jaeger``: the real CLI reads the traces a real Jaeger holds of requests
through real router and gateway processes (the stack of test_tracing_stack, as rendered), and
reports the stages, their durations, the critical path and the cost per request."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from penstock.dev.traces import profiles_from_jaeger
from tests.integration.test_tracing_stack import (
    NAMESPACE,
    PIPELINE,
    Processes,
    Stack,
    http,
    start_stack,
    wait_for,
)
from tests.support import tool

pytestmark = pytest.mark.integration

REQUESTS = 20
SERVICES = {"qa.router", "qa.retrieve", "qa.answer"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    tool("jaeger")  # fails naming how to get it
    running = Processes(tmp_path)
    try:
        yield start_stack(running, tmp_path)
    finally:
        running.stop()


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["penstock", "analyze", *args],  # the venv's console script, as a user runs it
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_analyze_reads_the_stages_from_jaeger(stack: Stack, tmp_path: Path) -> None:
    for number in range(REQUESTS):
        status, _ = http(stack.router, json.dumps({"q": f"question {number}"}).encode())
        assert status == 200

    def complete() -> dict[str, Any] | None:
        # Every request as one whole trace: the router's 3 spans and a span per gateway.
        code, data = http(f"{stack.query}/api/traces?service=qa.router&limit=1000")
        if code != 200:
            return None
        document: dict[str, Any] = json.loads(data)
        whole = [
            trace
            for trace in document["data"] or []
            if {p["serviceName"] for p in trace["processes"].values()} >= SERVICES
            and len(trace["spans"]) == 5
        ]
        return document if len(whole) >= REQUESTS else None

    document = wait_for("every request's spans in Jaeger", complete, timeout=90)
    # Kept for a failed run: the unit tests' CAPTURED trace was cut from such an answer.
    (tmp_path / "jaeger-answer.json").write_text(json.dumps(document, indent=1))
    profiles = profiles_from_jaeger(document, NAMESPACE, "qa")
    assert len(profiles) >= REQUESTS  # and the requests start_stack sent while waiting
    assert profiles_from_jaeger(document, "elsewhere", "qa") == []

    result = analyze(
        "--jaeger", stack.query, "--pipeline-ref", f"{NAMESPACE}/qa", "--since", "10m", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert f"read {len(profiles)} requests of {NAMESPACE}/qa" in result.stderr
    figures = json.loads(result.stdout)
    assert figures["requests"] == len(profiles)
    assert list(figures["stages"]) == ["retrieve", "answer"]
    for name in ("retrieve", "answer"):
        stage = figures["stages"][name]
        assert stage["calls"] == len(profiles)
        # Each stage server sleeps 20 ms; on loopback a call takes little more.
        assert 20 <= stage["p50_ms"] < 1000, (name, stage)
        assert stage["critical_share"] == 1.0
        assert stage["cache_hit_ratio"] is None  # no cache: its false hits are not misses
    total = figures["total_ms"]["p50"]
    assert 40 <= total < 2000
    assert figures["critical_path"] == ["retrieve", "answer"]
    assert figures["critical_path_share"] == 1.0
    # hourly rates 3.60 and 7.20 USD: at least 20 ms of each per request
    per_request = figures["cost_per_request_usd"]
    assert (3.60 + 7.20) / 3600 * 0.02 <= per_request < (3.60 + 7.20) / 3600 * 5
    stage_costs = [figures["stages"][name]["cost_usd"] for name in ("retrieve", "answer")]
    assert sum(stage_costs) == pytest.approx(per_request)
    assert stage_costs[1] > stage_costs[0]  # twice the rate, the same sleep

    # The table, with the Pipeline's dependencies for the critical path.
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    result = analyze(
        "--jaeger", f"{stack.query}/", "--pipeline-ref", f"{NAMESPACE}/qa", "--pipeline",
        str(pipeline), "--limit", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--limit 5 reached" in result.stderr
    assert "5 requests: end to end mean" in result.stdout
    assert "critical path: retrieve -> answer (100% of requests)" in result.stdout
    assert "cost: $" in result.stdout

    # A Pipeline Jaeger has no traces of: one line naming what it looked for.
    result = analyze("--jaeger", stack.query, "--pipeline-ref", f"{NAMESPACE}/chat")
    assert result.returncode == 1
    assert "has no traces of chat.router" in result.stderr
    assert "Traceback" not in result.stderr
