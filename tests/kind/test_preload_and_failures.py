"""Model preload, warmup-gated readiness and failures, with real init containers and probes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.kind.conftest import (
    Cluster,
    condition,
    one_stage,
    pod_ready,
    port_forward,
    serve_http,
    stage_pods,
    wait_for,
    wait_ready,
)

WEIGHTS = b"penstock test model, version 1\n"


def artifact() -> bytes:
    """A model archive with one file, byte-for-byte the same every time (fixed times)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("weights.txt")
        info.size, info.mtime, info.mode = len(WEIGHTS), 0, 0o644
        tar.addfile(info, io.BytesIO(WEIGHTS))
    return gzip.compress(raw.getvalue(), mtime=0)


def serve_artifact(cluster: Cluster, namespace: str) -> str:
    """An HTTP server pod with the archive (Python's http.server in the Penstock image); its URL."""
    files = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "artifacts"},
        "binaryData": {"model.tar.gz": base64.b64encode(artifact()).decode()},
    }
    applied = cluster.apply(files, namespace)
    assert applied.returncode == 0, applied.stderr
    command = ["python", "-m", "http.server", "8000", "--directory", "/srv"]
    url = serve_http(cluster, namespace, "artifacts", command, {"configMap": {"name": "artifacts"}})
    return f"{url}/model.tar.gz"


def test_preload_fetches_verifies_and_mounts_the_model_and_a_wrong_digest_is_reported(
    cluster: Cluster, operator: Any, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    url = serve_artifact(cluster, ns)
    good = hashlib.sha256(artifact()).hexdigest()
    model = {"uri": url, "sha256": good, "mountPath": "/models"}
    assert cluster.apply(one_stage("good", model), ns).returncode == 0
    assert cluster.apply(one_stage("bad", {**model, "sha256": "0" * 64}), ns).returncode == 0

    wait_ready(cluster, ns, "good", timeout=240)
    pod = stage_pods(cluster, ns, "good", "retrieve")[0]["metadata"]["name"]
    read = cluster.kubectl("exec", "-n", ns, pod, "-c", "stage", "--", "cat", "/models/weights.txt")
    assert read.stdout.encode() == WEIGHTS

    def preload_failed() -> dict[str, Any] | None:
        for pod in stage_pods(cluster, ns, "bad", "retrieve"):
            for status in pod["status"].get("initContainerStatuses", []):
                for state in (status.get("state", {}), status.get("lastState", {})):
                    if state.get("terminated", {}).get("exitCode", 0) != 0:
                        return pod
        return None

    failed = wait_for(preload_failed, timeout=120, interval=1, what="the bad preload to fail")
    assert not pod_ready(failed)
    assert not any(s.get("state", {}).get("running") for s in failed["status"]["containerStatuses"])

    def degraded() -> str | None:
        pipeline = cluster.get("pipeline", "bad", ns)
        if condition(pipeline, "Ready").get("status") != "False":
            return None
        message = str(condition(pipeline, "Degraded").get("message", ""))
        return message if condition(pipeline, "Degraded").get("status") == "True" else None

    message = wait_for(degraded, timeout=90, interval=2, what="Pipeline bad Degraded")
    assert message.startswith("retrieve: init container preload failed (exit 1)"), message
    assert "sha256" in message.lower() and good not in message, message


def test_warmup_gates_readiness(cluster: Cluster, operator: Any, restricted_namespace: str) -> None:
    ns = restricted_namespace
    url = serve_artifact(cluster, ns)
    model = {
        "uri": url,
        "sha256": hashlib.sha256(artifact()).hexdigest(),
        # A path the stage does not serve: every warmup request gets a 404.
        "warmup": {"requests": 2, "path": "/no-such-path", "body": {"text": "warmup"}},
    }
    assert cluster.apply(one_stage("warm", model), ns).returncode == 0

    def stage_running() -> dict[str, Any] | None:
        for pod in stage_pods(cluster, ns, "warm", "retrieve"):
            statuses = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}
            if statuses.get("stage", {}).get("ready"):
                return pod
        return None

    # The stage itself is up and healthy, yet the pod stays out of its Service: not Ready.
    wait_for(stage_running, timeout=180, interval=1, what="the stage container ready")
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        pods = stage_pods(cluster, ns, "warm", "retrieve")
        assert pods and not any(pod_ready(p) for p in pods), "Ready without a successful warmup"
        assert condition(cluster.get("pipeline", "warm", ns), "Ready").get("status") != "True"
        time.sleep(2)

    model["warmup"] = {"requests": 2, "path": "/", "body": {"text": "warmup"}}
    assert cluster.apply(one_stage("warm", model), ns).returncode == 0
    wait_ready(cluster, ns, "warm", timeout=180)


def _load(port: int, stop: threading.Event, results: list[tuple[int, str, float]]) -> None:
    """Distinct requests one after another until stop; (status, body, seconds) of each."""
    number = 0
    while not stop.is_set():
        number += 1
        body = json.dumps({"text": f"autoscaling question {number} {time.monotonic()}"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                results.append((response.status, "", time.monotonic() - started))
        except urllib.error.HTTPError as error:
            results.append((error.code, error.read().decode(), time.monotonic() - started))
        except OSError as error:  # a hang (timeout) or a broken port-forward
            results.append((0, repr(error), time.monotonic() - started))
        time.sleep(0.02)


@pytest.mark.parametrize("target", ["stage pod", "redis sidecar"])
def test_killing_a_stage_pod_or_its_redis_under_load(
    cluster: Cluster, operator: Any, namespace: str, target: str
) -> None:
    ns = namespace
    assert cluster.apply(one_stage("load", cache=True), ns).returncode == 0
    wait_ready(cluster, ns, "load", timeout=240)
    victim = stage_pods(cluster, ns, "load", "retrieve")[0]["metadata"]["name"]
    results: list[tuple[int, str, float]] = []
    stop = threading.Event()
    with port_forward(cluster, ns, "svc/load-router", 80) as port:
        worker = threading.Thread(target=_load, args=(port, stop, results), daemon=True)
        worker.start()
        time.sleep(3)
        before = len(results)
        if target == "stage pod":
            cluster.kubectl("delete", "pod", "-n", ns, victim, "--grace-period=0", "--force")
        else:  # redis-server is the cache container's PID 1: SIGTERM stops it, the kubelet restarts it
            cluster.kubectl("exec", "-n", ns, victim, "-c", "cache", "--", "sh", "-c", "kill 1")

        def recovered() -> bool:
            replaced = [p for p in stage_pods(cluster, ns, "load", "retrieve") if pod_ready(p)]
            return bool(replaced) and len(results) > before + 5 and results[-1][0] == 200

        wait_for(recovered, timeout=180, interval=1, what="requests succeeding again")
        time.sleep(2)
        stop.set()
        worker.join(timeout=30)
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) > 10 and statuses[-1] == 200
    assert max(seconds for _, _, seconds in results) < 15, "a request hung"
    if target == "redis sidecar":
        # The gateway fails open to the stage: not one request is lost with the cache gone.
        assert set(statuses) == {200}, [r for r in results if r[0] != 200][:5]
        restarts = {
            s["name"]: s["restartCount"]
            for s in cluster.get("pod", victim, ns)["status"]["containerStatuses"]
        }
        assert restarts["cache"] >= 1, restarts
        return
    # The router tries a refused connection again for a while (the Service has no ready pod
    # until the replacement is up): a request then either waited or failed cleanly.
    disrupted = [
        (status, body) for status, body, seconds in results if status != 200 or seconds > 1
    ]
    assert disrupted, "deleting the only stage pod delayed no request: it was not under load"
    for status, body in disrupted:
        if status == 200:
            continue
        assert status in (502, 503, 504), (status, body)
        answer = json.loads(body)
        assert answer.get("stage") == "retrieve" and "retrieve" in answer.get("error", ""), body
