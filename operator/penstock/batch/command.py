"""``penstock batch TARGET --input IN --output OUT``: every input line through a Pipeline.

TARGET is a router URL (``http://...``, e.g. a port-forwarded router Service) or a Pipeline
file, which runs locally as under ``penstock dev`` for the duration of the batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable, replica_hourly_cost
from penstock.batch.checkpoint import checkpoint_path, fingerprint
from penstock.batch.floors import PipelineFloors
from penstock.batch.items import count_lines, open_input, parse_item, read_lines
from penstock.batch.plan import Plan, PlanError, balance, probe
from penstock.batch.progress import Progress
from penstock.batch.runner import Options, Summary, run
from penstock.batch.upload import destination, is_remote, part_name, upload
from penstock.dev.processes import DevError
from penstock.errors import PenstockError

EXIT_FAILED_ITEMS = 2
# The input or output cannot be used (missing, refused, another run's): retrying cannot help.
# A PipelineRun's Job fails at once on it (render/run.py); 1 stays Python's, for a crash.
EXIT_UNUSABLE = 3
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text}: not a number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penstock batch",
        description="Send every JSON line of --input through a Pipeline and write one output "
        "line per input line, in input order, to --output. The concurrency is found by a "
        "controller (throughput up, p95 bounded, backs off on 429/503/errors) unless "
        "--concurrency fixes it. Killed and started again with the same arguments, it "
        "resumes where it stopped (OUTPUT.checkpoint).",
    )
    parser.add_argument(
        "target", metavar="TARGET", help="a router URL (http://...) or a Pipeline file"
    )
    parser.add_argument(
        "--input", required=True, help="JSON lines: a file, - (stdin), http(s)://, s3://B/KEY"
    )
    parser.add_argument(
        "--output",
        help="where the output lines go: a file, or s3://B/KEY, s3://B/PREFIX/, an http(s) URL "
        "(written under --work-dir, uploaded once complete); required unless --plan",
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="take only the input lines whose index modulo N is K (a PipelineRun's shards)",
    )
    parser.add_argument(
        "--work-dir", help="where a URL --output is written before the upload (default: a temp dir)"
    )
    parser.add_argument(
        "--id-field", metavar="NAME", help="copy this field of each input object to its record"
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, help="fixed items in flight (no controller)"
    )
    parser.add_argument(
        "--start-concurrency", type=_positive_int, default=4, help="controller start (4)"
    )
    parser.add_argument(
        "--max-concurrency", type=_positive_int, default=256, help="controller bound (256)"
    )
    parser.add_argument(
        "--max-p95-ms",
        type=_positive_float,
        help="p95 latency bound for the controller (default: 4x the first window's, >= 1 s)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a 429/502/503/504 or lost call (3)"
    )
    parser.add_argument(
        "--timeout-seconds", type=_positive_float, default=300.0, help="per item (300)"
    )
    parser.add_argument(
        "--max-line-bytes", type=_positive_int, default=1 << 20, help="longest line (1 MiB)"
    )
    parser.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header sent with every item (repeatable), e.g. an Authorization",
    )
    parser.add_argument(
        "--hourly-cost",
        type=_usd,
        help="the Pipeline's cost per hour in USD, for the cost per 1,000 items "
        "(default for a Pipeline file: its stages' minReplicas at the price table)",
    )
    parser.add_argument("--prices", help="a price table YAML (as the operator's --prices)")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="measure each stage with a few items and print the balancing replicas; no run",
    )
    parser.add_argument(
        "--apply-plan",
        metavar="NAMESPACE/NAME",
        help="with the plan as that cluster Pipeline's minReplicas floors, run the batch, then "
        "put the floors back (kubeconfig credentials; needs patch on pipelines)",
    )
    parser.add_argument(
        "--plan-items", type=_positive_int, default=32, help="items the plan probes (32)"
    )
    parser.add_argument(
        "--target-items-per-hour",
        type=_positive_float,
        help="the rate --plan balances for (default: the most the stages' bounds allow)",
    )
    parser.add_argument(
        "--allow-item-errors",
        action="store_true",
        help="exit 0 when the run completes even if some items failed (their records say why)",
    )
    parser.add_argument("--report", help="also write the summary (or the plan) as JSON here")
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="a bar on a terminal, lines every 10 s otherwise (auto)",
    )
    parser.add_argument("--log-dir", help="Pipeline file: where the local processes log")
    parser.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=180.0,
        help="Pipeline file: seconds for its processes to be ready (180)",
    )
    return parser


def _is_url(target: str) -> bool:
    return urlsplit(target).scheme in ("http", "https")


@contextmanager
def _pipeline(args: argparse.Namespace) -> Iterator[tuple[str, PipelineSpec | None]]:
    """The router URL to send to, and the spec when TARGET is a file (then running locally)."""
    if _is_url(args.target):
        yield args.target, None
        return
    from penstock.dev import runner

    dev_args = ["--port", str(runner.free_port()), "--no-stream"]
    dev_args += ["--ready-timeout", str(args.ready_timeout)]
    if args.log_dir:
        dev_args += ["--log-dir", args.log_dir]
    namespace = runner.build_parser().parse_args([args.target, *dev_args])
    with runner.serving(namespace) as served:
        print(f"penstock batch: {args.target} runs locally", file=sys.stderr, flush=True)
        spec = runner.load_pipeline(args.target)[1]
        yield f"http://{runner.HOST}:{served.port}/", spec


def hourly_cost(spec: PipelineSpec, prices: PriceTable) -> Decimal:
    """What the operator's status would say: the needed stages at their minReplicas."""
    needed = spec.needed_stages()
    return sum(
        (
            replica_hourly_cost(stage, prices) * stage.scaling_or_default.min_replicas
            for stage in spec.stages
            if stage.name in needed
        ),
        Decimal(0),
    )


def _write_report(path: str | None, document: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(document, indent=2) + "\n")


def _summary_text(summary: Summary, output: str) -> str:
    report = summary.report()
    cost = report["cost_per_1000_items_usd"]
    lines = [
        f"penstock batch: {'complete' if summary.complete else 'stopped'}: "
        f"{summary.done_before + summary.processed} lines in {output}"
        + (f" ({summary.done_before} from an earlier run)" if summary.done_before else ""),
        f"  this run: {summary.processed} items ({summary.succeeded} ok, {summary.failed} "
        f"failed, {summary.retries} retries) in {summary.seconds:.1f} s",
        f"  throughput: {report['items_per_hour']:,.0f} items/hour; latency p50 "
        f"{report['latency_p50_ms']} ms, p95 {report['latency_p95_ms']} ms; in flight "
        f"{summary.final_concurrency} at the end, {summary.peak_concurrency} at most",
        "  cost per 1,000 items: "
        + (f"${cost} USD" if cost is not None else "unknown (give --hourly-cost)"),
    ]
    return "\n".join(lines)


def _probe_bodies(source: str, count: int, max_bytes: int) -> list[bytes]:
    stream = open_input(source)
    try:
        lines = read_lines(stream, count)
    finally:
        if source != "-":
            stream.close()
    items = (parse_item(index, line, None, max_bytes) for index, line in enumerate(lines))
    bodies = [item.body for item in items if item.body is not None]
    if not bodies:
        raise PlanError(f"--plan: the first {count} lines of the input hold no JSON item")
    return bodies


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _plan(args: argparse.Namespace, url: str, spec: PipelineSpec | None) -> Plan:
    bodies = _probe_bodies(args.input, args.plan_items, args.max_line_bytes)
    times = asyncio.run(probe(url, bodies))
    target = args.target_items_per_hour / 3600 if args.target_items_per_hour else None
    return balance(times, spec, target, len(bodies))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not index.isdigit() and os.environ.get("JOB_COMPLETION_INDEX", "").isdigit():
        index = os.environ["JOB_COMPLETION_INDEX"]  # an Indexed Job's pod
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N")
    return int(index), int(count)


def _local_output(args: argparse.Namespace, shard: tuple[int, int] | None) -> Path:
    """The file the records are written to: --output, or for a URL a file under --work-dir."""
    if not is_remote(args.output):
        return Path(args.output)
    # Derived from the arguments, so that the same command finds its checkpoint again.
    key = fingerprint(args.target, args.input, {"shard": args.shard, "out": args.output})
    work = Path(args.work_dir or Path(tempfile.gettempdir()) / f"penstock-batch-{key}")
    work.mkdir(parents=True, exist_ok=True)
    return work / part_name(shard or (0, 1))


def _options(args: argparse.Namespace, url: str, spec: PipelineSpec | None) -> Options:
    prices = PriceTable.from_file(args.prices) if args.prices else PriceTable()
    target = str(Path(args.target).resolve()) if spec is not None else args.target
    cost = args.hourly_cost
    if cost is None and spec is not None:
        cost = hourly_cost(spec, prices)
    shard = parse_shard(args.shard)
    return Options(
        url=url,
        source=args.input,
        output=_local_output(args, shard),
        run_id=fingerprint(
            target, args.input, {"idField": args.id_field, "shard": shard, "out": args.output}
        ),
        shard=shard or (0, 1),
        id_field=args.id_field,
        concurrency=args.concurrency,
        start_concurrency=args.start_concurrency,
        max_concurrency=args.max_concurrency,
        max_p95_seconds=args.max_p95_ms / 1000 if args.max_p95_ms else None,
        retries=max(0, args.retries),
        timeout_seconds=args.timeout_seconds,
        max_line_bytes=args.max_line_bytes,
        headers=dict(args.header),
        hourly_cost=cost,
        total=count_lines(args.input),
    )


def _run(args: argparse.Namespace, options: Options) -> Summary:
    mode = args.progress
    progress = None
    if mode != "none":
        total = options.total
        if total is not None and options.shard[1] > 1:
            shard, shards = options.shard
            total = len(range(shard, total, shards))
        progress = Progress(total, terminal=None if mode == "auto" else mode == "bar")
    summary = asyncio.run(run(options, progress))
    if summary.complete and is_remote(args.output):
        target = destination(args.output, parse_shard(args.shard))
        upload(options.output, target)
        print(f"penstock batch: uploaded {options.output.name} to {target}", file=sys.stderr)
    return summary


def run_command(args: argparse.Namespace) -> int:
    with _pipeline(args) as (url, spec):
        if not (args.plan or args.apply_plan):
            summary = _run(args, _options(args, url, spec))
        else:
            plan = _plan(args, url, spec)
            if not args.apply_plan:
                print(plan.table())
                _write_report(args.report, plan.document())
                return 0
            print(plan.table(), file=sys.stderr)
            floors = PipelineFloors(args.apply_plan)
            raised = floors.apply(plan)
            changes = ", ".join(f"{f.stage} {f.before or 1} -> {f.during}" for f in raised)
            print(
                f"penstock batch: floors of {args.apply_plan} for the run: {changes or 'none'}",
                file=sys.stderr,
            )
            try:
                summary = _run(args, _options(args, url, spec))
            finally:
                kept = floors.restore()
                if raised:
                    note = f" (left as changed meanwhile: {', '.join(kept)})" if kept else ""
                    print(f"penstock batch: floors restored{note}", file=sys.stderr)
    print(_summary_text(summary, args.output), file=sys.stderr)
    _write_report(args.report, summary.report())
    return EXIT_FAILED_ITEMS if summary.failed_total and not args.allow_item_errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.apply_plan or not args.plan) and not args.output:
        parser.error("--output is required (unless --plan alone)")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run_command(args)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "penstock batch: interrupted"
            + (
                f"; the same command resumes ({checkpoint_path(Path(args.output))})"
                if args.output
                else ""
            ),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (PenstockError, DevError, ValueError) as error:
        print(f"penstock batch: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
