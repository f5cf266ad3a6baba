"""Benchmark: items/hour of `penstock batch` with its concurrency controller against fixed
concurrencies of 1 and 64, in the same run, on the same local Pipeline.

The Pipeline (tests/batch_stage.py under `penstock dev`): `shout` serves 4 items at a time in
10 ms each and sheds load (503, Retry-After: 1) beyond 8 waiting, like a bounded model server;
`count` (1 ms) sits behind a batching gateway. Each configuration sends the same --items
through the router, --rounds times, interleaved; the table gives the median items/hour, the
p95 latency, the retries (shed items sent again) and the failures, and the ratios to fixed 1
and fixed 64.

Run: python bench/batch.py [--items 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test stage and the harness, shared with the tests
from tests.batch_stage import pipeline_yaml, served  # noqa: E402
from tests.harness import free_port  # noqa: E402

CONFIGURATIONS = {"controller": [], "fixed 1": ["--concurrency", "1"], "fixed 64": ["--concurrency", "64"]}  # fmt: skip


def run_batch(url: str, items: Path, work: Path, name: str, extra: list[str]) -> dict[str, Any]:
    output = work / f"out-{name.replace(' ', '-')}.jsonl"
    for stale in (output, output.with_name(output.name + ".checkpoint")):
        stale.unlink(missing_ok=True)
    report = work / "report.json"
    command = [sys.executable, "-m", "penstock.cli", "batch", url, "--input", str(items)]
    result = subprocess.run(
        [*command, "--output", str(output), "--report", str(report), "--progress", "none", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode not in (0, 2):
        raise SystemExit(f"penstock batch ({name}) failed:\n{result.stderr}")
    summary: dict[str, Any] = json.loads(report.read_text())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=3000, help="items per run (3000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration (2)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="penstock-bench-batch-"))
    items = work / "in.jsonl"
    items.write_text(
        "".join(json.dumps({"id": i, "text": f"item {i}"}) + "\n" for i in range(args.items))
    )
    pipeline = work / "pipeline.yaml"
    pipeline.write_text(pipeline_yaml(work / "count-calls.txt"))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGURATIONS}
    with served(pipeline, free_port(), work / "logs") as url:
        for _ in range(args.rounds):
            for name, extra in CONFIGURATIONS.items():
                results[name].append(run_batch(url, items, work, name, extra))
                row = results[name][-1]
                print(
                    f"[bench] {name}: {row['items_per_hour']:,.0f} items/h, "
                    f"{row['retries']} retries, {row['failed']} failed",
                    file=sys.stderr,
                )
    rate = {name: statistics.median(r["items_per_hour"] for r in rows) for name, rows in results.items()}  # fmt: skip
    print(f"## penstock batch: {args.items} items x {args.rounds} rounds, interleaved\n")
    print("| concurrency | items/hour (median) | p95 ms | peak in flight | retries | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        p95 = statistics.median(r["latency_p95_ms"] for r in rows)
        peak = max(r["concurrency_peak"] for r in rows)
        retries = sum(r["retries"] for r in rows)
        failed = sum(r["failed"] for r in rows)
        print(f"| {name} | {rate[name]:,.0f} | {p95:.1f} | {peak} | {retries} | {failed} |")
    print(
        f"\ncontroller / fixed 1: {rate['controller'] / rate['fixed 1']:.2f}x; "
        f"controller / fixed 64: {rate['controller'] / rate['fixed 64']:.2f}x"
    )
    print(f"\nCommand: python bench/batch.py --items {args.items} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
