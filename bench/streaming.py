"""Benchmark stage-to-stage streaming (``input: stream``) against waiting for the whole answer.

    python bench/streaming.py [--requests 20] [--tokens 20] [--token-ms 25]

Two stages in separate processes, and two ``penstock router`` processes (one per Pipeline), on
loopback. ``gen`` produces ``--tokens`` tokens, one every ``--token-ms``; ``post`` upper-cases
what it gets and streams it to the client (the output, ``stream: true``):

  - streamed:  gen (stream: true) ──chunks──> post (input: stream): post starts on gen's first
               token and answers each one as it arrives;
  - envelope:  gen answers JSON when it is done, post gets the usual envelope: the baseline.

Interleaved request by request, the table gives the time to the client's first output byte and
to the end of the answer (p50, p95), and ends with one machine-readable line:
``streaming first_output_ratio=<streamed/envelope p50> total_ratio=<...> tokens=<n>``.
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

STAGES = """
import asyncio, json, sys
from aiohttp import web

tokens, pause = int(sys.argv[2]), float(sys.argv[3]) / 1000

async def gen_stream(request):
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for index in range(tokens):
        await asyncio.sleep(pause)
        await response.write(f"token{index} ".encode())
    await response.write_eof()
    return response

async def gen_json(request):
    await request.read()
    for _ in range(tokens):  # the same generation, token by token, answered at the end
        await asyncio.sleep(pause)
    return web.json_response({"text": "".join(f"token{i} " for i in range(tokens))})

async def post_stream(request):
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk.upper())
    await response.write_eof()
    return response

async def post_json(request):
    text = (await request.json())["gen"]["text"]
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(text.upper().encode())
    await response.write_eof()
    return response

async def healthz(request):
    return web.Response(text="ok")

async def main(ports):
    runners = []
    for handler, port in zip((gen_stream, gen_json, post_stream, post_json), ports):
        app = web.Application()
        app.router.add_post("/", handler)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""

STREAMED = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: streamed, namespace: bench}
spec:
  output: post
  stages:
    - {name: gen, image: bench/gen:1, stream: true}
    - {name: post, image: bench/post:1, dependsOn: [gen], input: stream, stream: true}
"""

ENVELOPE = """
apiVersion: penstock.dev/v1alpha1
kind: Pipeline
metadata: {name: envelope, namespace: bench}
spec:
  output: post
  stages:
    - {name: gen, image: bench/gen:1}
    - {name: post, image: bench/post:1, dependsOn: [gen], stream: true}
"""


def stage_urls(gen: int, post: int) -> list[str]:
    return [f"gen=http://127.0.0.1:{gen}", f"post=http://127.0.0.1:{post}"]


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, float, bytes]:
    started = time.perf_counter()
    first = 0.0
    parts = []
    async with session.post(url, json={"q": "bench"}) as response:
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {await response.text()}")
        async for chunk in response.content.iter_any():
            if not first:
                first = time.perf_counter() - started
            parts.append(chunk)
    return first, time.perf_counter() - started, b"".join(parts)


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await one(session, url)
            return
        except (aiohttp.ClientError, SystemExit):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> None:
    figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in urls}
    expected = "".join(f"token{i} " for i in range(args.tokens)).upper().encode()
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            await wait_up(session, url)
        for _ in range(args.requests):  # interleaved: both see the same machine
            for name, url in urls.items():
                first, total, body = await one(session, url)
                if body != expected:
                    raise SystemExit(f"{name}: unexpected answer {body[:80]!r}")
                figures[name][0].append(first)
                figures[name][1].append(total)
    print(f"{args.requests} requests each, {args.tokens} tokens every {args.token_ms:g} ms")
    print(f"{'pipeline':<10}{'first p50':>11}{'first p95':>11}{'total p50':>11}{'total p95':>11}")
    for name, (first, total) in figures.items():
        print(
            f"{name:<10}{nearest_rank(first, 0.5) * 1000:>9.1f}ms{nearest_rank(first, 0.95) * 1000:>9.1f}ms"
            f"{nearest_rank(total, 0.5) * 1000:>9.1f}ms{nearest_rank(total, 0.95) * 1000:>9.1f}ms"
        )
    first_ratio = statistics.median(figures["streamed"][0]) / statistics.median(
        figures["envelope"][0]
    )
    total_ratio = statistics.median(figures["streamed"][1]) / statistics.median(
        figures["envelope"][1]
    )
    print(
        f"streaming first_output_ratio={first_ratio:.3f} total_ratio={total_ratio:.3f}"
        f" tokens={args.tokens}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per pipeline (20)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens gen produces (20)")
    parser.add_argument("--token-ms", type=float, default=25.0, help="ms between tokens (25)")
    args = parser.parse_args()
    if not (1 <= args.requests <= 1000 and 1 <= args.tokens <= 10_000 and args.token_ms >= 0):
        parser.error("--requests 1..1000, --tokens 1..10000, --token-ms >= 0")
    ports = [free_port() for _ in range(4)]
    gen_stream, gen_json, post_stream, post_json = ports
    with tempfile.TemporaryDirectory() as tmp:
        streamed, envelope = Path(tmp, "streamed.yaml"), Path(tmp, "envelope.yaml")
        streamed.write_text(textwrap.dedent(STREAMED))
        envelope.write_text(textwrap.dedent(ENVELOPE))
        routers = {"streamed": free_port(), "envelope": free_port()}
        stage_command = [
            sys.executable,
            "-c",
            STAGES,
            json.dumps(ports),
            str(args.tokens),
            str(args.token_ms),
        ]
        with (
            process(stage_command),
            process(
                router_command(streamed, routers["streamed"], stage_urls(gen_stream, post_stream))
            ),
            process(router_command(envelope, routers["envelope"], stage_urls(gen_json, post_json))),
        ):
            urls = {name: f"http://127.0.0.1:{port}/" for name, port in routers.items()}
            asyncio.run(measure(args, urls))


if __name__ == "__main__":
    main()
