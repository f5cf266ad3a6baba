"""Benchmark a cascade of stage variants against the heavy variant alone.

    python bench/cascade.py [--requests 200] [--light-ms 5] [--heavy-ms 60] [--confident 0.8]

Two variant servers and two ``penstock router`` processes on loopback. ``light`` answers in
``--light-ms`` and reports ``X-Penstock-Confidence`` 0.9 for a fraction ``--confident`` of the
questions (fixed per question, so both pipelines see the same mix) and 0.2 for the rest;
``heavy`` answers every question in ``--heavy-ms``. The pipelines:
  - cascade: one stage with variants light then heavy, ``variantPolicy: {type: cascade}``
    (minConfidence 0.5): heavy only when light is not confident;
  - heavy:   the same stage with the heavy variant alone (the baseline).
Cost of a request: the time each variant spent on it at its hourly rate (``cost.hourlyRate``,
light $0.10, heavy $1.00 per replica-hour, i.e. what a busy replica costs per second it works).
Interleaved request by request; the table gives mean/p50/p95 latency, heavy calls per request and
cost per request; it ends with one machine-readable line:
``cascade latency_ratio=<cascade/heavy mean> cost_ratio=<...> heavy_share=<heavy calls/request>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from procs import (
    free_port,
    nearest_rank,
    process,
    router_command,
)  # bench/procs.py (this script's directory is on sys.path)

RATES = {"light": 0.10, "heavy": 1.00}  # USD per replica-hour, as in the Pipelines below

VARIANTS = """
import asyncio, json, sys
from aiohttp import web

light_port, heavy_port = json.loads(sys.argv[1])
light_s, heavy_s, confident = float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000, float(sys.argv[4])

async def light(request):
    question = (await request.json())["q"]
    await asyncio.sleep(light_s)
    sure = (question * 7919 % 1000) / 1000 < confident  # the same answer for the same question
    headers = {"X-Penstock-Confidence": "0.9" if sure else "0.2"}
    return web.json_response({"answer": f"light {question}"}, headers=headers)

async def heavy(request):
    question = (await request.json())["q"]
    await asyncio.sleep(heavy_s)
    return web.json_response({"answer": f"heavy {question}"})

async def healthz(request):
    return web.Response(text="ok")

async def main():
    runners = []
    for handler, port in ((light, light_port), (heavy, heavy_port)):
        app = web.Application()
        app.router.add_post("/", handler)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    await asyncio.Event().wait()

asyncio.run(main())
"""

CASCADE = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: cascade, namespace: bench}
spec:
  output: answer
  stages:
    - name: answer
      image: bench/answer-heavy:1
      variants:
        - {name: light, image: bench/answer-light:1, cost: {hourlyRate: "0.10"}}
        - {name: heavy, cost: {hourlyRate: "1.00"}}
      variantPolicy: {type: cascade, minConfidence: 0.5}
"""

HEAVY = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: heavy, namespace: bench}
spec:
  output: answer
  stages:
    - {name: answer, image: bench/answer-heavy:1, cost: {hourlyRate: "1.00"}}
"""


async def one(session: aiohttp.ClientSession, url: str, question: int) -> dict[str, object]:
    """Latency (s), the variants' time (s each) and the answer of one request."""
    started = time.perf_counter()
    headers = {"X-Penstock-Profile": "1"}
    async with session.post(url, json={"q": question}, headers=headers) as response:
        document = await response.json()
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {document}")
    latency = time.perf_counter() - started
    timing = {s["name"]: s for s in document["profile"]["stages"]}["answer"]
    spent = {"light": 0.0, "heavy": 0.0}
    for attempt in timing.get("attempts") or [{"variant": "heavy", **timing}]:
        spent[attempt["variant"]] += attempt["duration_ms"] / 1000
    return {"latency": latency, "spent": spent, "answer": document["output"]["answer"]}


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await one(session, url, -1)
            return
        except (aiohttp.ClientError, SystemExit, KeyError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> None:
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    costs: dict[str, list[float]] = {name: [] for name in urls}
    heavy_calls = {name: 0 for name in urls}
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            await wait_up(session, url)
        for question in range(args.requests):  # interleaved: both see the same machine
            for name, url in urls.items():
                result = await one(session, url, question)
                spent = result["spent"]
                assert isinstance(spent, dict) and isinstance(result["latency"], float)
                latencies[name].append(result["latency"])
                costs[name].append(sum(spent[v] * RATES[v] / 3600 for v in spent))
                heavy_calls[name] += spent["heavy"] > 0
    print(
        f"{args.requests} requests each; light {args.light_ms:g} ms (confident on"
        f" {args.confident:.0%}), heavy {args.heavy_ms:g} ms"
    )
    print(f"{'pipeline':<9}{'mean':>9}{'p50':>9}{'p95':>9}{'heavy/req':>11}{'USD/1M req':>12}")
    for name in urls:
        values = latencies[name]
        print(
            f"{name:<9}{statistics.mean(values) * 1000:>7.1f}ms{nearest_rank(values, 0.5) * 1000:>7.1f}ms"
            f"{nearest_rank(values, 0.95) * 1000:>7.1f}ms{heavy_calls[name] / args.requests:>11.2f}"
            f"{statistics.mean(costs[name]) * 1e6:>12.2f}"
        )
    latency_ratio = statistics.mean(latencies["cascade"]) / statistics.mean(latencies["heavy"])
    cost_ratio = statistics.mean(costs["cascade"]) / statistics.mean(costs["heavy"])
    print(
        f"cascade latency_ratio={latency_ratio:.3f} cost_ratio={cost_ratio:.3f}"
        f" heavy_share={heavy_calls['cascade'] / args.requests:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per pipeline (200)")
    parser.add_argument("--light-ms", type=float, default=5.0, help="light variant's ms (5)")
    parser.add_argument("--heavy-ms", type=float, default=60.0, help="heavy variant's ms (60)")
    parser.add_argument(
        "--confident", type=float, default=0.8, help="share light is confident on (0.8)"
    )
    args = parser.parse_args()
    if not (
        1 <= args.requests <= 10_000
        and 0 <= args.light_ms <= 10_000
        and 0 <= args.heavy_ms <= 10_000
        and 0 <= args.confident <= 1
    ):
        parser.error("--requests 1..10000, --light-ms/--heavy-ms 0..10000, --confident 0..1")
    light, heavy = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cascade, alone = Path(tmp, "cascade.yaml"), Path(tmp, "heavy.yaml")
        cascade.write_text(textwrap.dedent(CASCADE))
        alone.write_text(textwrap.dedent(HEAVY))
        routers = {"cascade": free_port(), "heavy": free_port()}
        variants = [
            sys.executable,
            "-c",
            VARIANTS,
            json.dumps([light, heavy]),
            str(args.light_ms),
            str(args.heavy_ms),
            str(args.confident),
        ]
        cascade_urls = [
            f"answer/light=http://127.0.0.1:{light}",
            f"answer/heavy=http://127.0.0.1:{heavy}",
        ]
        with (
            process(variants),
            process(router_command(cascade, routers["cascade"], cascade_urls)),
            process(router_command(alone, routers["heavy"], [f"answer=http://127.0.0.1:{heavy}"])),
        ):
            urls = {name: f"http://127.0.0.1:{port}/" for name, port in routers.items()}
            asyncio.run(measure(args, urls))


if __name__ == "__main__":
    main()
