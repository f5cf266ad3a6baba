"""Push every input line through a Pipeline's router: concurrent, controlled, resumable.

Items are read in chunks in a thread (file, stdin, HTTP or S3 reads block), sent as soon as the
controller's limit allows, and their records handed to the ordered output. What an item's
record says:

- `{"index": i, "id": ..., "output": <the router's JSON answer>}` (`id` with --id-field);
- `{"index": i, "id": ..., "error": {"status": <HTTP status or null>, "message": "..."}}` for
  a line that is not JSON, a 4xx or 500 answer, a 502/504/connection failure still failing
  after --retries, or a 429/503 (the pipeline shedding load: retried after its Retry-After,
  with jitter) still refused when the item's --timeout-seconds run out.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import aiohttp

from penstock.batch.checkpoint import CheckpointError, OrderedOutput
from penstock.batch.control import ConcurrencyController
from penstock.batch.items import Item, open_input, parse_item, read_lines, skip_lines
from penstock.batch.progress import Progress
from penstock.dataplane.jsonbody import JsonBodyError, parse
from penstock.dev.analyze import percentile

# Answers worth another try: the pipeline is overloaded or a replica went away.
RETRIED = frozenset({429, 502, 503, 504})
OVERLOAD = frozenset({429, 503})
READ_CHUNK = 512
LATENCY_SAMPLES = 100_000
# Records finished ahead of an unfinished earlier line, held in memory: at most this many, and
# at most these bytes (a slow item holds the output back; the rest must not fill the memory).
AHEAD_RECORDS = 8192
AHEAD_BYTES = 64 << 20
MIN_WAIT = 0.05
MESSAGE_BYTES = 2000


@dataclass
class Options:
    url: str
    source: str
    output: Path
    run_id: str
    id_field: str | None = None
    concurrency: int | None = None
    """Fixed concurrency; None: the controller finds it."""
    start_concurrency: int = 4
    max_concurrency: int = 256
    max_p95_seconds: float | None = None
    retries: int = 3
    timeout_seconds: float = 300.0
    max_line_bytes: int = 1 << 20
    headers: Mapping[str, str] = field(default_factory=dict)
    hourly_cost: Decimal | None = None
    total: int | None = None
    """Input lines, for the ETA, when known."""
    shard: tuple[int, int] = (0, 1)
    """(k, n): this run takes the input lines whose index modulo n is k."""


@dataclass
class Summary:
    done_before: int = 0
    """Lines a previous run had finished (resumed)."""
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """A uniform sample of the successful items' latencies (at most LATENCY_SAMPLES)."""
    failed_total: int = 0
    """Error records in the whole output, earlier runs included."""
    final_concurrency: int = 0
    peak_concurrency: int = 0
    complete: bool = False
    hourly_cost: Decimal | None = None

    @property
    def items_per_hour(self) -> float:
        return self.processed / self.seconds * 3600 if self.seconds > 0 else 0.0

    @property
    def cost_per_1000(self) -> Decimal | None:
        if self.hourly_cost is None or not self.processed:
            return None
        hours = Decimal(str(self.seconds)) / 3600
        return self.hourly_cost * hours / self.processed * 1000

    def add_latency(self, seconds: float) -> None:
        """Reservoir sampling: memory stays bounded however many items a shard has."""
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(seconds)
            return
        slot = random.randrange(self.succeeded)
        if slot < LATENCY_SAMPLES:
            self.latencies[slot] = seconds

    def report(self) -> dict[str, Any]:
        cost = self.cost_per_1000
        return {
            "complete": self.complete,
            "resumed_after": self.done_before,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failed_total": self.failed_total,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "items_per_hour": round(self.items_per_hour, 1),
            "latency_p50_ms": round(percentile(self.latencies, 0.5) * 1000, 2),
            "latency_p95_ms": round(percentile(self.latencies, 0.95) * 1000, 2),
            "concurrency_final": self.final_concurrency,
            "concurrency_peak": self.peak_concurrency,
            "cost_per_1000_items_usd": None if cost is None else f"{cost:.6f}",
        }


@dataclass(frozen=True)
class Outcome:
    record: dict[str, Any]
    ok: bool
    latency: float
    retries: int


def _record(item: Item, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"index": item.index}
    if item.id is not None:
        record["id"] = item.id
    record.update(fields)
    return record


def _error(item: Item, status: int | None, message: str) -> dict[str, Any]:
    return _record(item, error={"status": status, "message": message[:MESSAGE_BYTES]})


def _retry_after(headers: Mapping[str, str], attempt: int) -> float:
    value = str(headers.get("Retry-After", "")).strip()
    if value.isascii() and value.isdigit():  # delta-seconds ("²" is a digit, not ASCII)
        return min(10.0, max(MIN_WAIT, float(value)))
    return _backoff(attempt)


def _backoff(attempt: int) -> float:
    return min(10.0, 0.5 * 2.0**attempt)


class Sender:
    """One item to the router, with retries; every attempt is reported to the controller.

    Shed load (429/503) is retried after its Retry-After while the item has time: the pipeline
    said "later". 502/504 and lost calls are retried --retries times with backoff (0.5 s,
    doubling). Any other answer is the item's record. Every attempt runs within what is left
    of the item's --timeout-seconds.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: Options,
        controller: ConcurrencyController,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.options = options
        self.controller = controller
        self.clock = clock
        self.headers = {"Content-Type": "application/json", **options.headers}

    async def send(self, item: Item) -> Outcome:
        assert item.body is not None
        attempt, started = 0, self.clock()
        deadline = started + self.options.timeout_seconds
        while True:
            began = self.clock()
            status, text, wait = None, "", 0.0
            budget = aiohttp.ClientTimeout(total=max(deadline - began, MIN_WAIT))
            try:
                async with self.session.post(
                    self.options.url, data=item.body, headers=self.headers, timeout=budget
                ) as response:
                    raw = await response.read()
                    status = response.status
                    latency = self.clock() - began
                    if status == 200:
                        self.controller.record(latency, ok=True)
                        record = _answered(item, raw)
                        return Outcome(record, "error" not in record, latency, attempt)
                    text = raw.decode("utf-8", "replace")
                    wait = _retry_after(response.headers, attempt)
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                wait = _backoff(attempt)
            overloaded = status in OVERLOAD
            transient = status is None or status in RETRIED
            # The controller backs off on shed load and on the pipeline failing (502/504, lost
            # calls), not on an item's own error (a 400 for a bad item says nothing of load).
            self.controller.record(
                self.clock() - began,
                ok=False,
                overloaded=overloaded,
                failed=transient and not overloaded,
            )
            wait *= 1 + random.random() / 2  # jitter: the shed items do not return together
            out_of_time = self.clock() + wait > deadline
            spent = not overloaded and attempt >= self.options.retries
            if not transient or out_of_time or spent:
                detail = text.strip() or f"HTTP {status}"
                if attempt:
                    detail += f" (after {attempt + 1} attempts)"
                record = _error(item, status, detail)
                return Outcome(record, False, self.clock() - started, attempt)
            attempt += 1
            await asyncio.sleep(wait)


def _answered(item: Item, raw: bytes) -> dict[str, Any]:
    """The record of an answer: its JSON, the text of a streamed output that is not one JSON
    value, or an error when it holds what no JSON line can (a lone surrogate, NaN)."""
    try:
        value, _ = parse(raw)
    except JsonBodyError as error:
        if raw.lstrip()[:1] in (b"{", b"["):
            return _error(item, 200, f"the answer {error}")
        try:
            return _record(item, output={"text": raw.decode("utf-8")})
        except UnicodeDecodeError:
            return _error(item, 200, f"the answer {error}")
    return _record(item, output=value)


async def run(options: Options, progress: Progress | None = None) -> Summary:
    """The whole batch (or its rest, when the output's checkpoint says where a run stopped).

    SIGTERM cancels it like Ctrl-C: in-flight items are dropped, the output is synced up to
    the last line written, and the same command resumes from there.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(options, progress)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


async def _run(options: Options, progress: Progress | None) -> Summary:
    output = OrderedOutput(options.output, options.run_id)
    summary = Summary(hourly_cost=options.hourly_cost)
    started = time.monotonic()
    # The input first: when it cannot be read, nothing is written.
    stream = await asyncio.to_thread(open_input, options.source)
    try:
        summary.done_before = await asyncio.to_thread(output.open)
        if not output.complete:
            # A shard's first `done` items are done: shard k's i-th item is line i x n + k,
            # so they end at line (done - 1) x n + k; skip the first done x n lines.
            shard, shards = options.shard
            needed = (summary.done_before - 1) * shards + shard + 1
            lines_done = summary.done_before * shards
            skipped = await asyncio.to_thread(skip_lines, stream, lines_done)
            if summary.done_before and skipped < needed:
                raise CheckpointError(
                    f"the input has {skipped} lines, fewer than the {needed} the checkpoint "
                    "says are done: not the input of that run"
                )
            summary.complete = await _drive(options, output, stream, summary, progress, started)
        else:
            summary.complete = True
    finally:
        summary.seconds = time.monotonic() - started
        await asyncio.to_thread(output.close, complete=summary.complete)
        summary.failed_total = output.failed
        if options.source != "-":
            stream.close()
    return summary


async def _drive(
    options: Options,
    output: OrderedOutput,
    stream: IO[bytes],
    summary: Summary,
    progress: Progress | None,
    started: float,
) -> bool:
    fixed = options.concurrency
    controller = ConcurrencyController(
        time.monotonic(),
        start=fixed or options.start_concurrency,
        low=fixed or 1,
        high=fixed or options.max_concurrency,
        max_p95_seconds=options.max_p95_seconds,
    )
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=options.timeout_seconds)
    queue: deque[Item] = deque()
    shard, shards = options.shard
    next_index, exhausted = summary.done_before * shards, False
    position = summary.done_before
    inflight: dict[asyncio.Task[Outcome], Item] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sender = Sender(session, options, controller)
        try:
            while True:
                if not exhausted and len(queue) < READ_CHUNK:
                    lines = await asyncio.to_thread(read_lines, stream, READ_CHUNK)
                    exhausted = len(lines) < READ_CHUNK
                    for line in lines:
                        index, next_index = next_index, next_index + 1
                        if index % shards != shard:
                            continue
                        queue.append(
                            parse_item(
                                index, line, options.id_field, options.max_line_bytes, position
                            )
                        )
                        position += 1
                while (
                    queue
                    and len(inflight) < controller.limit
                    and queue[0].position - output.done < AHEAD_RECORDS
                    and output.waiting_bytes < AHEAD_BYTES
                ):
                    item = queue.popleft()
                    if item.body is None:
                        output.put(item.position, _error(item, None, item.error or "unreadable"))
                        summary.processed += 1
                        summary.failed += 1
                        continue
                    inflight[asyncio.create_task(sender.send(item))] = item
                if not inflight:
                    if exhausted and not queue:
                        return True
                    continue
                finished, _ = await asyncio.wait(
                    inflight, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
                )
                for task in finished:
                    item = inflight.pop(task)
                    outcome = task.result()
                    output.put(item.position, outcome.record)
                    summary.processed += 1
                    summary.retries += outcome.retries
                    if outcome.ok:
                        summary.succeeded += 1
                        summary.add_latency(outcome.latency)
                    else:
                        summary.failed += 1
                if output.sync_due():
                    await asyncio.to_thread(output.sync, output.snapshot())
                controller.tick(time.monotonic())
                summary.final_concurrency = controller.limit
                summary.peak_concurrency = controller.peak
                if progress is not None:
                    elapsed = time.monotonic() - started
                    progress.update(
                        done=output.done,
                        failed=summary.failed,
                        rate=summary.processed / elapsed if elapsed > 0 else 0.0,
                        concurrency=controller.limit,
                    )
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            summary.final_concurrency = controller.limit
            summary.peak_concurrency = controller.peak
            if progress is not None:
                progress.finish()
