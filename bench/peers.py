"""Penstock's gateway side by side with Ray Serve on one machine (not a test; bounded loops).

    python bench/peers.py [--requests 1000] [--rate 300] [--clients 32] [--batch-seconds 10]

Needs Ray Serve: the optional ``bench`` extra (``uv sync --frozen --extra dev --extra examples
--extra bench``, or ``pip install 'ray[serve]==2.60.0'``); without it the bench says so and
exits 1. Ray runs locally with 2 CPUs, bound to 127.0.0.1, usage stats off, no dashboard.

1. The hop: the same echo stage (``{"echo": <body>}``) called directly (aiohttp, the
   baseline), through the gateway (no cache), and as a Ray Serve deployment behind Ray's HTTP
   proxy; interleaved request by request at ``--rate``; added p50/p99 against the direct call
   and CPU per request (the gateway process; every process of the local Ray cluster).
2. Batching on the same model: all-MiniLM-L6-v2 (examples/rag/minilm.py, numpy) behind the
   gateway with ``--batch-max-size 32 --batch-max-latency-ms 5`` in front of
   examples/rag/embed/app.py, and as a Ray Serve deployment with ``@serve.batch(32, 5 ms)``;
   ``--clients`` closed-loop clients send distinct texts for ``--batch-seconds`` each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import aiohttp

from gateway import (
    REPO,
    STAGE_APP,
    added_row,
    closed_loop,
    free_port,
    interleaved,
    paced,
    percentile,
    process,
    table,
    wait_http,
)
from nginx import cpu_seconds

RAY_APP = """
import asyncio, json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[3], "examples", "rag"))
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
         log_to_driver=False, configure_logging=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})

@serve.deployment(max_ongoing_requests=256)
class Echo:
    async def __call__(self, request: Request) -> Response:
        body = await request.json()
        return Response(json.dumps({"echo": body}), media_type="application/json")

@serve.deployment(max_ongoing_requests=256)
class Embed:
    def __init__(self, examples: str) -> None:
        sys.path.insert(0, examples)  # a replica is a process of its own
        from minilm import MiniLM
        self.model = MiniLM(None)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(self.model.encode, texts)
        return [row.tolist() for row in vectors]

    async def __call__(self, request: Request) -> Response:
        body = await request.json()
        vector = await self.embed(body["text"])
        return Response(json.dumps({"embedding": vector}), media_type="application/json")

serve.run(Echo.bind(), name="echo", route_prefix="/echo")
if sys.argv[2] == "1":
    serve.run(
        Embed.bind(os.path.join(sys.argv[3], "examples", "rag")), name="embed", route_prefix="/embed"
    )
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every process below it (Ray's GCS, raylet, workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    total = 0.0
    for pid in family:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def wait_ray(session: aiohttp.ClientSession, url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with session.post(url, json={"text": "warm"}) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"bench: Ray Serve did not answer {url} within {seconds:g} s")


async def run(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    stage_port, ray_port, gw_port, gw_admin = free_port(), free_port(), free_port(), free_port()
    embed_port, batch_port, batch_admin = free_port(), free_port(), free_port()
    stage_url = f"http://127.0.0.1:{stage_port}"
    ray_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    gateway = [sys.executable, "-m", "penstock.dataplane.gateway"]
    batching = "0" if args.no_batching else "1"
    embed = [sys.executable, str(REPO / "examples/rag/embed/app.py"), "--port", str(embed_port)]
    with (
        process([sys.executable, "-c", STAGE_APP, str(stage_port)]),
        process(
            [
                *gateway,
                *("--upstream", stage_url, "--stage", "peers", "--pipeline", "bench"),
                *("--listen", f"127.0.0.1:{gw_port}", "--admin-listen", f"127.0.0.1:{gw_admin}"),
            ]
        ) as gw,
        process(embed, env={**os.environ, "HF_HUB_OFFLINE": "1"}),
        process(
            [
                *gateway,
                *("--upstream", f"http://127.0.0.1:{embed_port}", "--stage", "embed"),
                *("--listen", f"127.0.0.1:{batch_port}"),
                *("--admin-listen", f"127.0.0.1:{batch_admin}"),
                *("--timeout-seconds", "60", "--batch-path", "/batch"),
                *("--batch-max-size", "32", "--batch-max-latency-ms", "5"),
            ]
        ),
        process(
            [sys.executable, "-c", RAY_APP, str(ray_port), batching, str(REPO)], env=ray_env
        ) as ray,
    ):
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await wait_http(session, f"http://127.0.0.1:{gw_admin}/ready", seconds=60)
            ray_echo = f"http://127.0.0.1:{ray_port}/echo"
            await wait_ray(session, ray_echo, seconds=180)
            run_id = time.time_ns()

            def poster(url: str) -> object:
                async def call(index: int) -> None:
                    body = {"run": run_id, "i": index}
                    async with session.post(url, json=body) as response:
                        await response.read()
                        assert response.status == 200, response.status

                return call

            urls = [stage_url + "/", f"http://127.0.0.1:{gw_port}/", ray_echo]
            for url in urls:
                await paced(100, args.rate, poster(url))  # type: ignore[arg-type]
            before = (cpu_seconds(gw.pid), tree_cpu_seconds(ray.pid))
            direct, via_gateway, via_ray = await interleaved(
                args.requests,
                args.rate,
                [poster(url) for url in urls],  # type: ignore[misc]
            )
            cpu = (
                (cpu_seconds(gw.pid) - before[0]) / args.requests * 1000,
                (tree_cpu_seconds(ray.pid) - before[1]) / args.requests * 1000,
            )
            base50, base99 = percentile(direct, 50), percentile(direct, 99)
            hop_rows: list[tuple[str, ...]] = [
                (
                    "direct to the stage (baseline)",
                    f"{base50 * 1000:.3f}",
                    f"{base99 * 1000:.3f}",
                    "",
                )
            ]
            for label, values, cpu_ms in (
                ("Penstock gateway (no cache)", via_gateway, cpu[0]),
                ("Ray Serve 2.60 (proxy + replica)", via_ray, cpu[1]),
            ):
                hop_rows.append(added_row(label, values, direct, cpu_ms))
            batch_rows: list[tuple[str, ...]] = []
            if not args.no_batching:
                await wait_http(session, f"http://127.0.0.1:{batch_admin}/ready", seconds=120)
                await wait_ray(session, f"http://127.0.0.1:{ray_port}/embed", seconds=180)
                cases = (
                    ("Penstock gateway, batched (32 / 5 ms)", f"http://127.0.0.1:{batch_port}/"),
                    ("Ray Serve @serve.batch (32 / 5 ms)", f"http://127.0.0.1:{ray_port}/embed"),
                )
                warm = argparse.Namespace(**{**vars(args), "batch_seconds": 1.0})
                found = {}
                for label, url in cases:
                    await closed_loop(session, url, "warmup " + label, warm)
                    done, elapsed, latencies = await closed_loop(session, url, label, args)
                    found[label] = (
                        done / elapsed,
                        percentile(latencies, 50),
                        percentile(latencies, 95),
                    )
                base_rps = found[cases[0][0]][0]
                for label, _ in cases:
                    rps, p50, p95 = found[label]
                    batch_rows.append(
                        (
                            label,
                            f"{rps:.1f}",
                            f"{p50 * 1000:.1f}",
                            f"{p95 * 1000:.1f}",
                            f"{rps / base_rps:.2f}x",
                        )
                    )
    return hop_rows, batch_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="hop: requests per case")
    parser.add_argument("--rate", type=float, default=300, help="hop: requests per second")
    parser.add_argument("--clients", type=int, default=32, help="batching: concurrent clients")
    parser.add_argument("--batch-seconds", type=float, default=10, help="batching: s per case")
    parser.add_argument(
        "--batch-requests", type=int, default=20_000, help="batching: most requests per case"
    )
    parser.add_argument("--no-batching", action="store_true", help="only the hop")
    args = parser.parse_args()
    if not 10 <= args.requests <= 100_000 or args.rate <= 0 or not 0 < args.batch_seconds <= 300:
        parser.error("--requests must be in 10..100000, --rate positive, --batch-seconds <= 300")
    if importlib.util.find_spec("ray") is None:
        print(
            "bench: Ray Serve is not installed (the bench extra: pip install 'ray[serve]==2.60.0')"
        )
        return 1
    os.environ.setdefault("PYTHONPATH", str(REPO / "operator"))
    hop_rows, batch_rows = asyncio.run(run(args))
    print(f"peers, the hop: {args.requests} requests per case at {args.rate:g} req/s, interleaved")
    table(("case", "p50 ms (added)", "p99 ms (added)", "CPU ms/request"), hop_rows)
    if batch_rows:
        print(
            f"\npeers, batching all-MiniLM-L6-v2: {args.clients} closed-loop clients, "
            f"{args.batch_seconds:g} s per case"
        )
        table(("case", "req/s", "p50 ms", "p95 ms", "req/s vs gateway"), batch_rows)
    print("every figure is from this same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
