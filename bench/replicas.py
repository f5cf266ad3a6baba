"""Replicas of one stage with and without the shared tier (not a test; bounded loops).

    python bench/replicas.py [--replicas 4] [--requests 3000] [--keys 300] [--rate 250]

Starts a redis-server (the shared tier), the echo stage of bench/gateway.py and 1 + 2 x
--replicas `penstock gateway` processes on 127.0.0.1, every gateway with a memory tier:
  - one replica alone (the baseline);
  - --replicas replicas, each with its own cache only (what a Deployment had before the
    shared tier: N caches for N replicas);
  - --replicas replicas sharing the Redis (`--shared-redis-url`, one Pipeline key).
Each set gets the same --requests requests at --rate per second, drawn (seeded) from --keys
distinct bodies with Zipf-like popularity (s = 1) and sent to a random replica, as a Service
spreads connections; the hit ratio is the share of answers marked `X-Penstock-Cache: hit`.
Then --concurrent identical requests at once (the stage takes 50 ms), spread over the replicas
of each set: the stage calls they made. Ends with one machine-readable line:
`replicas n=<n> single_hit=<x> separate_hit=<x> shared_hit=<x> shared_vs_single=<x>
separate_burst_calls=<n> shared_burst_calls=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp

from gateway import STAGE_APP, paced, table, wait_http
from procs import free_port, process


@dataclass
class Replicas:
    name: str
    urls: list[str]
    admins: list[str]


def gateway_command(stage_url: str, port: int, admin: int, stage: str) -> list[str]:
    return [
        *(sys.executable, "-m", "penstock.dataplane.gateway", "--upstream", stage_url),
        *("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"),
        *("--stage", stage, "--pipeline", "bench", "--memory-cache-max-entries", "100000"),
    ]


async def scrape(session: aiohttp.ClientSession, admins: list[str]) -> dict[str, float]:
    """Lease results (``coalescing <result>``) and tier lookups (``<tier> <result>``), summed
    over the replicas' /metrics."""
    counted: dict[str, float] = {}
    for admin in admins:
        async with session.get(admin + "/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            for family, label in (
                ("penstock_stage_shared_coalescing_total{", "result"),
                ("penstock_stage_cache_tier_lookups_total{", "tier"),
            ):
                if line.startswith(family):
                    labels = dict(
                        part.split("=", 1)
                        for part in line[len(family) : line.index("}")].split(",")
                    )
                    name = labels[label].strip('"')
                    if label == "result":
                        name = f"coalescing {name}"
                    else:
                        name = f"{name} {labels['result'].strip(chr(34))}"
                    counted[name] = counted.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return counted


def zipf_keys(count: int, keys: int, seed: int) -> list[int]:
    """``count`` draws from ``keys`` ranks with weight 1/rank."""
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, keys + 1)]
    return rng.choices(range(keys), weights=weights, k=count)


async def run(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], str]:
    stage_port, redis_port = free_port(), free_port()
    stage_url = f"http://127.0.0.1:{stage_port}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    sets: list[Replicas] = []
    with ExitStack() as stack:
        stack.enter_context(
            process(
                [
                    *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no"),
                ]
            )
        )
        stack.enter_context(process([sys.executable, "-c", STAGE_APP, str(stage_port)]))
        shared_env = {**os.environ, "SHARED_CACHE_KEY": "bench-pipeline-key"}
        for name, count in (
            ("one replica", 1),
            (f"{args.replicas} replicas, a cache each", args.replicas),
            (f"{args.replicas} replicas, shared tier", args.replicas),
        ):
            shared = "shared" in name
            replicas = Replicas(name, [], [])
            for _ in range(count):
                port, admin = free_port(), free_port()
                # A stage name per set: the sets never see each other's entries.
                command = gateway_command(stage_url, port, admin, f"set{len(sets)}")
                if shared:
                    command += ["--shared-redis-url", redis_url]
                stack.enter_context(process(command, env=shared_env if shared else None))
                replicas.urls.append(f"http://127.0.0.1:{port}/")
                replicas.admins.append(f"http://127.0.0.1:{admin}")
            sets.append(replicas)

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for replicas in sets:
                for admin in replicas.admins:
                    await wait_http(session, admin + "/ready")
            await asyncio.sleep(0.5)  # the shared replicas subscribe to the lease notices
            run_id = time.time_ns()

            async def stage_calls() -> int:
                async with session.get(stage_url + "/count") as response:
                    return int((await response.json())["calls"])

            draws = zipf_keys(args.requests, args.keys, seed=7)
            pick = random.Random(11)
            targets = [pick.randrange(1 << 30) for _ in range(args.requests)]
            ratios: dict[str, float] = {}
            rows: list[tuple[str, ...]] = []
            for replicas in sets:
                hits = 0
                before = await stage_calls()

                async def call(index: int, replicas: Replicas = replicas) -> None:
                    nonlocal hits
                    url = replicas.urls[targets[index] % len(replicas.urls)]
                    body = {"run": run_id, "set": replicas.name, "key": draws[index]}
                    async with session.post(url, json=body) as response:
                        await response.read()
                        assert response.status == 200, response.status
                        hits += response.headers.get("X-Penstock-Cache") == "hit"

                await paced(args.requests, args.rate, call)
                calls = await stage_calls() - before
                ratios[replicas.name] = hits / args.requests
                rows.append((replicas.name, f"{hits / args.requests:.3f}", str(calls)))
                counted = await scrape(session, replicas.admins)
                if "shared" in replicas.name:
                    leases = ", ".join(
                        f"{result} {counted.get(f'coalescing {result}', 0):g}"
                        for result in ("led", "joined", "alone")
                    )
                    rows.append(("  its leases", leases, ""))
                errors = sum(value for name, value in counted.items() if name.endswith(" error"))
                rows.append(("  its cache lookups that failed", f"{errors:g}", ""))
            distinct = len(set(draws))
            rows.append(("(the best any cache can do)", f"{1 - distinct / args.requests:.3f}", ""))

            bursts: dict[str, int] = {}
            for replicas in sets[1:]:
                before = await stage_calls()

                async def one(index: int, replicas: Replicas = replicas) -> None:
                    url = replicas.urls[index % len(replicas.urls)]
                    body = {"run": run_id, "burst": replicas.name, "sleep": 0.05}
                    async with session.post(url, json=body) as response:
                        await response.read()

                await asyncio.gather(*(one(index) for index in range(args.concurrent)))
                bursts[replicas.name] = await stage_calls() - before
    single, separate, shared_set = (ratios[replicas.name] for replicas in sets)
    separate_burst, shared_burst = bursts.values()
    rows.append(("shared tier / one replica (hit ratio)", f"{shared_set / single:.2f}x", ""))
    for name, calls in bursts.items():
        rows.append((f"{args.concurrent} identical requests at once: {name}", "", str(calls)))
    line = (
        f"replicas n={args.replicas} single_hit={single:.3f} separate_hit={separate:.3f}"
        f" shared_hit={shared_set:.3f} shared_vs_single={shared_set / single:.2f}"
        f" separate_burst_calls={separate_burst} shared_burst_calls={shared_burst}"
    )
    return rows, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4, help="replicas per set")
    parser.add_argument("--requests", type=int, default=3000, help="requests per set")
    parser.add_argument("--keys", type=int, default=300, help="distinct request bodies")
    parser.add_argument("--rate", type=float, default=250, help="requests per second")
    parser.add_argument("--concurrent", type=int, default=50, help="identical requests at once")
    args = parser.parse_args()
    if args.replicas < 2 or args.requests < 1 or args.keys < 1 or args.rate <= 0:
        parser.error("need --replicas >= 2 and positive --requests, --keys and --rate")
    rows, line = asyncio.run(run(args))
    table(("set", "hit ratio", "stage calls"), rows)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
