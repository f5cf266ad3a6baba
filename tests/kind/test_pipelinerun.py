"""A PipelineRun on real kubelets: the operator's Indexed Job runs `penstock batch` shards in
pods of the Penstock image, through a real Pipeline's router, reading the input from and
uploading the records to an HTTP server pod; and a run whose input is missing fails at once,
saying why, without retries."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.kind.conftest import (
    Cluster,
    one_stage,
    port_forward,
    serve_http,
    wait_for,
    wait_ready,
)

ITEMS = 60
# Serves GET /in.jsonl, keeps every PUT body by path, and lists them at GET /stored.
SINK = f"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ITEMS = "".join(json.dumps({{"id": i, "text": f"question {{i}}", "k": 2}}) + "\\n" for i in range({ITEMS}))
STORED = {{}}
class Sink(BaseHTTPRequestHandler):
    def _send(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/in.jsonl":
            self._send(200, ITEMS.encode())
        elif self.path == "/stored":
            self._send(200, json.dumps(STORED).encode())
        else:
            self._send(404, b"no such file")
    def do_PUT(self):
        STORED[self.path] = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self._send(201)
ThreadingHTTPServer(("0.0.0.0", 8000), Sink).serve_forever()
"""


def serve_sink(cluster: Cluster, namespace: str) -> str:
    return serve_http(cluster, namespace, "sink", ["python", "-c", SINK])


def run(name: str, sink: str, source: str, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "answers",
            "input": f"{sink}/{source}",
            "output": f"{sink}/out/",
            "parallelism": parallelism,
            "idField": "id",
            "deadlineSeconds": 600,
        },
    }


def finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    body = cluster.get("pipelinerun", name, namespace)
    phase = ((body or {}).get("status") or {}).get("phase")
    return body if phase in ("Succeeded", "Failed") else None


def test_a_run_pushes_every_line_through_the_pipeline_in_shards(
    cluster: Cluster, operator: Any, namespace: str
) -> None:
    sink = serve_sink(cluster, namespace)
    applied = cluster.apply(one_stage("answers"), namespace)
    assert applied.returncode == 0, applied.stderr
    wait_ready(cluster, namespace, "answers")
    applied = cluster.apply(run("questions", sink, "in.jsonl", 2), namespace)
    assert applied.returncode == 0, applied.stderr
    body = wait_for(
        lambda: finished(cluster, namespace, "questions"),
        timeout=300,
        interval=2,
        what="the PipelineRun finished",
    )
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["shards"], status["itemsDone"], status["itemsFailed"]) == ("2/2", ITEMS, 0)
    assert status["itemsPerHour"] > 0
    assert status["costPer1000Items"] is not None
    with (
        port_forward(cluster, namespace, "svc/sink", 8000) as port,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/stored", timeout=10) as response,
    ):
        stored = json.loads(response.read())
    assert sorted(stored) == ["/out/part-00000-of-00002.jsonl", "/out/part-00001-of-00002.jsonl"]
    records = [json.loads(line) for part in stored.values() for line in part.splitlines()]
    assert sorted(record["index"] for record in records) == list(range(ITEMS))
    assert all("output" in record for record in records), records[:3]
    assert {record["id"] for record in records} == set(range(ITEMS))
    reasons = {e["reason"] for e in cluster.items("events", namespace)}
    assert "Succeeded" in reasons


def test_a_missing_input_fails_the_run_at_once_saying_why(
    cluster: Cluster, operator: Any, namespace: str
) -> None:
    sink = serve_sink(cluster, namespace)
    applied = cluster.apply(one_stage("answers"), namespace)
    assert applied.returncode == 0, applied.stderr
    applied = cluster.apply(run("missing", sink, "nothing.jsonl", 1), namespace)
    assert applied.returncode == 0, applied.stderr
    body = wait_for(
        lambda: finished(cluster, namespace, "missing"),
        timeout=300,  # the Pipeline becomes Ready first
        interval=2,
        what="the PipelineRun failed",
    )
    assert body["status"]["phase"] == "Failed"
    failed = next(c for c in body["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True"
    assert "HTTP 404" in failed["message"] and "nothing.jsonl" in failed["message"]
    job = cluster.get("job", "missing-batch", namespace)
    assert job["status"].get("failed") == 1  # no retry of a shard that cannot read its input
