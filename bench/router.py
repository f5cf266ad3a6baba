"""Benchmark ``penstock router`` on loopback and print a table (not a test; bounded loops).

    python bench/router.py [--requests 300] [--sleeps 20,30,10,15]

A 4-stage diamond DAG of real stage servers (one separate process, one port per stage), each
sleeping a fixed time before answering:

    a (20 ms) ──> b (30 ms) ──┐
          └─────> c (10 ms) ──┴──> d (15 ms)      output: d; critical path a -> b -> d

``penstock router`` runs as its own process (``--pipeline`` + ``--stage-url``). In one run,
interleaved request by request, the table compares the end-to-end latency of
  - the router,
  - the critical path called directly in sequence by the client (a, b, d: the measured ideal),
  - all stages called in sequence (a, b, c, d: what a naive chain costs),
  - the critical path called in sequence through nginx (one worker, keep-alive; bench/nginx.py,
    when Debian's nginx-light is installed): the reference hop,
against the ideal (sum of sleeps along the longest path), and gives the router's overhead per
hop (stage call on the critical path) at p50/p99, and as a ratio to nginx's per hop.
Target: router <= critical path * 1.05 + 1 ms per hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

import nginx  # bench/nginx.py, the reference hop (this script's directory is on sys.path)
from procs import free_port  # bench/procs.py

STAGE_SERVER = """
import asyncio, json, sys
from aiohttp import web

async def main(spec):
    runners = []
    for name, port, sleep_ms in spec:
        async def handle(request, name=name, sleep=sleep_ms / 1000):
            body = await request.read()
            await asyncio.sleep(sleep)
            return web.Response(body=b'{"stage":"' + name.encode() + b'","n":' + str(len(body)).encode() + b"}",
                                content_type="application/json")
        app = web.Application()
        app.router.add_post("/", handle)
        app.router.add_get("/healthz", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""

PIPELINE = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: diamond, namespace: bench}
spec:
  output: d
  stages:
    - {name: a, image: bench/a:1}
    - {name: b, image: bench/b:1, dependsOn: [a]}
    - {name: c, image: bench/c:1, dependsOn: [a]}
    - {name: d, image: bench/d:1, dependsOn: [b, c]}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def wait_up(session: aiohttp.ClientSession, url: str, deadline: float) -> None:
    while True:
        try:
            async with session.post(url, data=b"{}") as response:
                if response.status == 200:
                    await response.read()
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not come up")
        await asyncio.sleep(0.1)


async def call(session: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        if r.status != 200:
            raise SystemExit(f"{url} answered {r.status}: {data[:200]!r}")
        return data


def run(args: argparse.Namespace) -> None:
    sleeps = dict(zip("abcd", (float(s) for s in args.sleeps.split(",")), strict=True))
    ports = {name: free_port() for name in "abcd"}
    urls = {name: f"http://127.0.0.1:{port}/" for name, port in ports.items()}
    spec = [[name, ports[name], sleeps[name]] for name in "abcd"]
    stage_proc = subprocess.Popen([sys.executable, "-c", STAGE_SERVER, json.dumps(spec)])
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Path(tmp) / "pipeline.yaml"
        pipeline.write_text(textwrap.dedent(PIPELINE))
        router_port, admin_port = free_port(), free_port()
        command = [
            sys.executable,
            "-c",
            "import sys; from penstock.dataplane.router import main; sys.exit(main())",
            "--listen",
            f"127.0.0.1:{router_port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            "--pipeline",
            str(pipeline),
        ]
        for name in "abcd":
            command += ["--stage-url", f"{name}=http://127.0.0.1:{ports[name]}"]
        router_proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        ngx_port = free_port()
        routes = {f"/{name}/": port for name, port in ports.items()}
        try:
            router = f"http://127.0.0.1:{router_port}/"
            if nginx.available():
                with nginx.nginx(ngx_port, routes=routes):
                    via = {name: f"http://127.0.0.1:{ngx_port}/{name}/" for name in ports}
                    asyncio.run(measure(args, sleeps, urls, router, via))
            else:
                print("(nginx not found: apt-get install nginx-light for the reference hop)")
                asyncio.run(measure(args, sleeps, urls, router, None))
        finally:
            router_proc.terminate()
            stage_proc.terminate()
            router_proc.wait(10)
            stage_proc.wait(10)


async def measure(
    args: argparse.Namespace,
    sleeps: dict[str, float],
    urls: dict[str, str],
    router: str,
    via_nginx: dict[str, str] | None,
) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + 30
        for url in [*urls.values(), router, *(via_nginx or {}).values()]:
            await wait_up(session, url, deadline)
        query = json.dumps({"q": "how fast is the router?"}).encode()

        async def through_router() -> None:
            await call(session, router, query)

        async def chain(names: str, through: dict[str, str] = urls) -> None:
            # The envelope a stage gets from its dependencies, built by the client.
            outputs: dict[str, bytes] = {}
            deps = {"a": "", "b": "a", "c": "a", "d": "bc"}
            for name in names:
                if deps[name]:
                    parts = [b'{"input":', query]
                    for dep in deps[name]:
                        parts += [b',"', dep.encode(), b'":', outputs.get(dep, b"null")]
                    body = b"".join([*parts, b"}"])
                else:
                    body = query
                outputs[name] = await call(session, through[name], body)

        cases = {
            "router (DAG, parallel)": through_router,
            "critical path direct (a,b,d)": lambda: chain("abd"),
            "all stages in sequence": lambda: chain("abcd"),
        }
        if via_nginx is not None:
            cases["critical path via nginx (a,b,d)"] = lambda: chain("abd", via_nginx)
        for _ in range(args.warmup):
            for run_case in cases.values():
                await run_case()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.requests):
            for name, run_case in cases.items():
                started = time.perf_counter()
                await run_case()
                times[name].append((time.perf_counter() - started) * 1000)

    ideal = sleeps["a"] + max(sleeps["b"], sleeps["c"]) + sleeps["d"]
    hops = 3
    crit = times["critical path direct (a,b,d)"]
    print(
        f"router bench: diamond a({sleeps['a']:g}) -> b({sleeps['b']:g}) | c({sleeps['c']:g})"
        f" -> d({sleeps['d']:g}) ms, {args.requests} requests each, interleaved, one client"
    )
    print(f"{'path':32} {'p50 ms':>8} {'p99 ms':>8} {'p50/ideal':>10} {'p50/crit':>9}")
    print(f"{'ideal (sum of sleeps, a,b,d)':32} {ideal:8.2f} {ideal:8.2f} {1.0:10.3f} {'':>9}")
    for name, values in times.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(
            f"{name:32} {p50:8.2f} {p99:8.2f} {p50 / ideal:10.3f} {p50 / percentile(crit, 50):9.3f}"
        )
    routed = times["router (DAG, parallel)"]
    print()
    for q in (50, 99):
        overhead = (percentile(routed, q) - percentile(crit, q)) / hops
        print(f"router overhead per hop vs direct critical path, p{q}: {overhead:+.3f} ms")
        if via_nginx is not None:
            proxied = times["critical path via nginx (a,b,d)"]
            reference = (percentile(proxied, q) - percentile(crit, q)) / hops
            ratio = overhead / reference if reference > 0 else float("inf")
            print(
                f"  nginx's per hop (each stage through nginx), p{q}: {reference:+.3f} ms;"
                f" router / nginx: {ratio:.2f}x"
            )
    budget = percentile(crit, 50) * 1.05 + 1.0 * hops
    verdict = "MET" if percentile(routed, 50) <= budget else "MISSED"
    print(
        f"target p50 <= critical path * 1.05 + 1 ms/hop = {budget:.2f} ms:"
        f" {percentile(routed, 50):.2f} ms -> {verdict}"
    )
    sequence = percentile(times["all stages in sequence"], 50)
    print(
        f"speed-up of the router over all stages in sequence (p50): {sequence / percentile(routed, 50):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per path")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per path")
    parser.add_argument("--sleeps", default="20,30,10,15", help="ms slept by stages a,b,c,d")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000:
        raise SystemExit("--requests must be in 1..100000")
    run(args)


if __name__ == "__main__":
    main()
