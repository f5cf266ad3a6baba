"""Benchmark the gateway's semantic tier on loopback and print a table (not a test; bounded).

    python bench/semantic.py [--pairs 60] [--stage-ms 200]

Starts a redis-server, the RAG example's embed stage (all-MiniLM-L6-v2 on the CPU, one BLAS
thread) as the embedder, a stage answering after --stage-ms (a stand-in for a model call) and
two `penstock gateway` processes in front of it: one with the semantic tier, one exact only.
From the should-hit pairs of the shipped evaluation set, the first text of each pair is asked
(a miss, stored and indexed), then the second (a paraphrase). Measured in the same run:
  - an exact hit (the same text again), the baseline;
  - one call of the embedder from the client;
  - a semantic hit: p50/p95 and the share of paraphrases served;
  - a miss through the semantic gateway against a miss through the exact-only one: what the
    embedding costs a request that finds nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gateway import STAGE_APP, free_port, percentile, process, wait_http  # noqa: E402

PAIRS = ROOT / "operator" / "penstock" / "semantic" / "eval-pairs.jsonl"


def gateway_argv(
    stage: str, redis: str, embedder: str | None, name: str
) -> tuple[list[str], str, str]:
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "penstock.cli", "gateway", "--upstream", stage]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    argv += ["--redis-url", redis, "--stage", name, "--pipeline", "bench"]
    if embedder:
        argv += ["--semantic-embedder-url", embedder, "--semantic-verify-fraction", "0"]
    return argv, f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{admin}/ready"


async def timed(session: aiohttp.ClientSession, url: str, body: object) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url, json=body) as response:
        await response.read()
        tier = response.headers.get("X-Penstock-Cache-Tier", "")
    return (time.perf_counter() - started) * 1000, tier


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> list[tuple[str, ...]]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    pairs = [r for r in rows if r["label"] == "hit" and "text" in r["a"]][: args.pairs]
    async with aiohttp.ClientSession() as session:
        for url in (urls["embed_health"], urls["semantic_ready"], urls["exact_ready"]):
            await wait_http(session, url, 120)
        exact, embed, semantic_hit, semantic_miss, exact_miss = [], [], [], [], []
        served = 0
        for number, pair in enumerate(pairs):
            first, second = pair["a"], pair["b"]
            # Fresh keys (every first ask misses); the bench stage sleeps "sleep" seconds.
            tag = {"run": str(time.time()), "n": number, "sleep": args.stage_ms / 1000}
            a, b = {**first, **tag}, {**second, **tag}
            # The tag is the same in both asks: every field but the text must be equal.
            semantic_miss.append((await timed(session, urls["semantic"], a))[0])
            exact_miss.append((await timed(session, urls["exact"], a))[0])
            await asyncio.sleep(0.02)  # the store and the indexing run after the answer
            exact.append((await timed(session, urls["semantic"], a))[0])
            started = time.perf_counter()
            async with session.post(urls["embedder"], json={"text": second["text"]}) as r:
                await r.read()
            embed.append((time.perf_counter() - started) * 1000)
            took, tier = await timed(session, urls["semantic"], b)
            if tier == "semantic":
                served += 1
                semantic_hit.append(took)
    base = percentile(exact, 50)

    def row(name: str, values: list[float]) -> tuple[str, ...]:
        if not values:
            return (name, "-", "-", "-")
        p50 = percentile(values, 50)
        return (name, f"{p50:.2f}", f"{percentile(values, 95):.2f}", f"{p50 / base:.1f}x")

    return [
        row("exact hit (baseline)", exact),
        row("embedder call from the client", embed),
        row(f"semantic hit ({served}/{len(pairs)} paraphrases served)", semantic_hit),
        row("miss, exact-only gateway", exact_miss),
        row("miss, semantic gateway (+ embedding)", semantic_miss),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=60, help="paraphrase pairs (default 60)")
    parser.add_argument(
        "--stage-ms", type=float, default=200, help="the stage's answer time (default 200)"
    )
    args = parser.parse_args(argv)
    redis_port, embed_port, stage_port = free_port(), free_port(), free_port()
    redis = f"redis://127.0.0.1:{redis_port}/0"
    embedder = f"http://127.0.0.1:{embed_port}"
    stage = f"http://127.0.0.1:{stage_port}"
    semantic_argv, semantic_url, semantic_ready = gateway_argv(stage, redis, embedder, "semantic")
    exact_argv, exact_url, exact_ready = gateway_argv(
        stage, redis, None, "exact"
    )  # keys of its own
    embed_app = str(ROOT / "examples" / "rag" / "embed" / "app.py")
    with (
        process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"]),
        process([sys.executable, embed_app, "--port", str(embed_port), "--threads", "1"]),
        process([sys.executable, "-c", STAGE_APP, str(stage_port)]),
        process(semantic_argv),
        process(exact_argv),
    ):
        urls = {
            "embedder": embedder + "/",
            "embed_health": embedder + "/healthz",
            "semantic": semantic_url,
            "semantic_ready": semantic_ready,
            "exact": exact_url,
            "exact_ready": exact_ready,
        }
        rows = asyncio.run(measure(args, urls))
    header = ("request", "p50 ms", "p95 ms", "p50 vs exact hit")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
