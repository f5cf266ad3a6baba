"""A stage that behaves like a model server under load, for the batch tests and bench/batch.py.

`--workers` calls are served at a time, each taking `--service-ms`; at most `--queue` more wait,
and beyond that the stage sheds load with 503 (Retry-After: 1), as a bounded server does. POST
/batch serves a JSON array in one turn (service time + 10% per extra item). An item (or the
pipeline input of a dependant) with `"fail": true` gets a 500. GET /calls counts the calls; --record FILE
appends each call's item count to FILE.

    python tests/batch_stage.py --port 8001 --name shout --workers 4 --service-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

SCRIPT = Path(__file__).resolve()


def pipeline_yaml(record: Path, shout_queue: int = 8) -> str:
    """A Pipeline of two such stages for `penstock dev`: shout (10 ms, 4 at a time, shedding
    beyond `shout_queue` waiting) then count (1 ms), whose gateway batches up to 8 items;
    count appends its calls' item counts to `record`."""
    shout = f"python {SCRIPT} --port {{port}} --name shout --workers 4 --service-ms 10"
    shout += f" --queue {shout_queue}"
    count = f"python {SCRIPT} --port {{port}} --name count --workers 2 --service-ms 1"
    count += f" --record {record}"
    return f"""
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata:
  name: batch-test
  annotations:
    penstock.dev/dev-command.shout: "{shout}"
    penstock.dev/dev-command.count: "{count}"
spec:
  stages:
    - name: shout
      image: example/shout:1
      resources: {{requests: {{cpu: "1", memory: 1Gi}}}}
    - name: count
      image: example/count:1
      dependsOn: [shout]
      batching: {{maxBatchSize: 8, maxLatencyMs: 2}}
"""


@contextmanager
def served(pipeline: Path, port: int, log_dir: Path) -> Iterator[str]:
    """`penstock dev` of a Pipeline file (output not streamed); its router URL."""
    command = [sys.executable, "-m", "penstock.cli", "dev", str(pipeline), "--no-stream"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        for line in process.stdout:
            if "is ready at" in line:
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"penstock dev did not start: {line} (logs in {log_dir})")
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="stage")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--queue", type=int, default=32)
    parser.add_argument("--service-ms", type=float, default=5.0)
    parser.add_argument("--record", help="append each call's item count to this file")
    args = parser.parse_args()

    def record(count: int) -> None:
        if args.record:
            with open(args.record, "a") as file:
                file.write(f"{count}\n")

    workers = asyncio.Semaphore(args.workers)
    state: dict[str, Any] = {"/": 0, "/batch": 0, "batch_sizes": [], "shed": 0, "waiting": 0}

    def answer(body: Any) -> dict[str, Any]:
        given = body.get("input", body) if isinstance(body, dict) else body
        text = given.get("text", "") if isinstance(given, dict) else ""
        return {"stage": args.name, "text": str(text).upper(), "seen": body}

    def failing(body: Any) -> bool:
        given = body.get("input", body) if isinstance(body, dict) else body
        return isinstance(given, dict) and given.get("fail") is True

    async def serve(seconds: float) -> web.Response | None:
        if state["waiting"] >= args.queue + args.workers:
            state["shed"] += 1
            return web.json_response(
                {"error": "overloaded"}, status=503, headers={"Retry-After": "1"}
            )
        state["waiting"] += 1
        try:
            async with workers:
                await asyncio.sleep(seconds)
        finally:
            state["waiting"] -= 1
        return None

    async def root(request: web.Request) -> web.Response:
        state["/"] += 1
        body = await request.json()
        record(1)
        shed = await serve(args.service_ms / 1000)
        if shed is not None:
            return shed
        if failing(body):
            return web.json_response({"error": "asked to fail"}, status=500)
        return web.json_response(answer(body))

    async def batch(request: web.Request) -> web.Response:
        state["/batch"] += 1
        items = await request.json()
        state["batch_sizes"].append(len(items))
        record(len(items))
        seconds = args.service_ms / 1000 * (1 + 0.1 * (len(items) - 1))
        shed = await serve(seconds)
        if shed is not None:
            return shed
        return web.json_response([answer(item) for item in items])

    async def calls(request: web.Request) -> web.Response:
        return web.json_response(state)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", root)
    app.router.add_post("/batch", batch)
    app.router.add_get("/calls", calls)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
