"""Benchmark prompt packing (``batching.pack``) against one call per prompt.

    python bench/packing.py [--prompts 64] [--concurrency 16] [--call-ms 80] [--item-ms 5]

A stage process that behaves like an LLM server on one CPU: a call takes ``--call-ms`` (the
fixed cost of a generation call: scheduling, prefill of the instructions) plus ``--item-ms`` per
numbered prompt it answers, one call at a time (a single-stream model), and answers a packed
prompt with a numbered list. In front of it, two ``penstock gateway`` processes: one with
``--pack-template`` (max 8 per call, 20 ms to fill), one plain. ``--concurrency`` clients send
``--prompts`` distinct prompts through each, interleaved by round. Prints stage calls, wall time
and time per prompt for both, and one machine-readable line:
``packing calls_ratio=<packed/plain> time_per_item_ratio=<...> fallbacks=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from procs import free_port, process  # bench/procs.py (this script's directory is on sys.path)

STAGE = """
import asyncio, json, re, sys
from aiohttp import web

call_s, item_s = float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000
lock = asyncio.Lock()  # one generation at a time, as a single model instance on a CPU
calls = 0

async def root(request):
    global calls
    prompt = (await request.json())["prompt"]
    asked = re.findall(r"^(\\d+)\\. (.*)$", prompt, re.M)
    async with lock:
        calls += 1
        await asyncio.sleep(call_s + item_s * max(1, len(asked)))
    if asked:
        text = "\\n".join(f"{n}. answer to {q}" for n, q in asked)
    else:
        text = f"answer to {prompt}"
    return web.json_response({"text": text})

async def count(request):
    return web.json_response({"calls": calls})

async def healthz(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/", root)
app.router.add_get("/calls", count)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def gateway(port: int, stage: int, packed: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "penstock.cli",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{free_port()}",
        "--upstream",
        f"http://127.0.0.1:{stage}",
        "--stage",
        "llm",
        "--timeout-seconds",
        "120",
    ]
    if packed:
        command += [
            "--pack-template",
            "Answer each of the {count} requests:\n{items}",
            "--batch-max-size",
            "8",
            "--batch-max-latency-ms",
            "20",
        ]
    return command


async def calls(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return int((await response.json())["calls"])


async def run_round(
    session: aiohttp.ClientSession, url: str, prompts: list[str], concurrency: int
) -> float:
    queue = list(prompts)
    started = time.perf_counter()

    async def client() -> None:
        while queue:
            prompt = queue.pop()
            async with session.post(url, json={"prompt": prompt}) as response:
                answer = await response.json()
            if response.status != 200 or answer.get("text") != f"answer to {prompt}":
                raise SystemExit(f"{url}: wrong answer for {prompt!r}: {answer}")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.post(url, json={"prompt": "warm"}) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered")
        await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, urls: dict[str, str], stages: dict[str, str]) -> None:
    seconds = {name: 0.0 for name in urls}
    used = {name: 0 for name in urls}
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            await wait_ready(session, url)
        for round_number in range(args.rounds):
            for name, url in urls.items():
                prompts = [f"{name} question {round_number}-{i}" for i in range(args.prompts)]
                before = await calls(session, stages[name])
                seconds[name] += await run_round(session, url, prompts, args.concurrency)
                used[name] += await calls(session, stages[name]) - before
    items = args.prompts * args.rounds
    print(
        f"{items} prompts through each, {args.concurrency} clients; a call takes"
        f" {args.call_ms:g} ms + {args.item_ms:g} ms per prompt"
    )
    print(f"{'gateway':<8}{'stage calls':>12}{'wall s':>9}{'ms/prompt':>11}")
    for name in urls:
        print(
            f"{name:<8}{used[name]:>12}{seconds[name]:>9.2f}{seconds[name] / items * 1000:>11.1f}"
        )
    fallbacks = used["packed"] - -(-items // 8)
    print(
        f"packing calls_ratio={used['packed'] / used['plain']:.3f}"
        f" time_per_item_ratio={seconds['packed'] / seconds['plain']:.3f}"
        f" fallbacks={max(0, fallbacks)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="prompts per round (64)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, interleaved (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients (16)")
    parser.add_argument("--call-ms", type=float, default=80.0, help="fixed ms per call (80)")
    parser.add_argument("--item-ms", type=float, default=5.0, help="ms per prompt (5)")
    args = parser.parse_args()
    if not (
        1 <= args.prompts <= 10_000 and 1 <= args.rounds <= 20 and 1 <= args.concurrency <= 256
    ):
        parser.error("--prompts 1..10000, --rounds 1..20, --concurrency 1..256")
    ports = {name: (free_port(), free_port()) for name in ("packed", "plain")}
    stage_args = [str(args.call_ms), str(args.item_ms)]
    with (
        process([sys.executable, "-c", STAGE, str(ports["packed"][1]), *stage_args]),
        process([sys.executable, "-c", STAGE, str(ports["plain"][1]), *stage_args]),
        process(gateway(ports["packed"][0], ports["packed"][1], packed=True)),
        process(gateway(ports["plain"][0], ports["plain"][1], packed=False)),
    ):
        urls = {name: f"http://127.0.0.1:{front}/" for name, (front, _) in ports.items()}
        stages = {name: f"http://127.0.0.1:{stage}/calls" for name, (_, stage) in ports.items()}
        asyncio.run(measure(args, urls, stages))


if __name__ == "__main__":
    main()
