"""``penstock analyze``: what a Pipeline's time goes to, and what to change, from router profiles.

Input: a file of JSON lines, each a router response to a request sent with
``X-Penstock-Profile: 1`` (``{"output", "profile": {"stages", "critical_path", "total_ms"}}``, or
the bare profile), optionally with ``"request": <the request body>``; or ``--url URL --requests N
--body FILE`` to collect them from a running router (``--save FILE`` keeps them).

Figures (percentiles are nearest-rank: p50 of n values is the ceil(0.5 n)-th smallest):

- per stage: duration mean, p50, p95 (``end_ms - start_ms``), and the share of requests whose
  critical path contains it;
- the critical path seen most often, and how often;
- waiting time per stage: ``start_ms - max(end_ms of its dependencies)`` (``start_ms`` is already
  relative to the request's start; a stage without dependencies waits ``start_ms``). It is the
  time a stage could have run but had not started: router scheduling and connection overhead.
  Dependencies come from ``--pipeline FILE``; without it they are inferred as the latest stage that
  ended before the stage started (a lower bound of the real wait);
- redundant calls: the profile does not expose stage inputs, so requests whose body repeats an
  earlier one (needs ``"request"`` in the records; ``--url`` adds it);
- cache hit ratio per stage from the profile's ``cache`` field: ``hit / (hit + miss)``
  (``bypass`` and absent values do not count);
- batch fill per stage, with ``--metrics-url`` (a gateway's admin ``/metrics``, repeatable): mean
  of ``penstock_stage_batch_size`` over the batch's ``maxBatchSize`` (needs ``--pipeline``; the
  mean size alone otherwise).

Recommendations carry an expected saving per request, counted only while the stage is on the
critical path (time off the critical path does not shorten the answer); savings under 0.5 ms or
2% of the mean request time are not worth a change and are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.validation import needed_stages, validate_document
from penstock.safeyaml import DocumentError, load_yaml_file

PROFILE_HEADER = "X-Penstock-Profile"


class AnalyzeError(Exception):
    """Bad input; the message names the file and line."""


@dataclass(frozen=True)
class StageTiming:
    name: str
    start_ms: float
    end_ms: float
    cache: str | None

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Profile:
    stages: dict[str, StageTiming]
    critical_path: tuple[str, ...]
    total_ms: float
    request: str | None = None  # the request body, canonical JSON, when known


@dataclass
class StageFigures:
    name: str
    calls: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    critical_share: float
    wait_mean_ms: float
    wait_p95_ms: float
    cache_hits: int
    cache_misses: int
    hit_p50_ms: float | None = None
    miss_p50_ms: float | None = None
    batch_mean_size: float | None = None
    batch_fill: float | None = None

    @property
    def hit_ratio(self) -> float | None:
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else None


@dataclass
class Report:
    requests: int
    total_mean_ms: float
    total_p50_ms: float
    total_p95_ms: float
    stages: dict[str, StageFigures]
    critical_path: tuple[str, ...]
    critical_path_share: float
    repeated_requests: int | None
    unused_stages: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)

    @property
    def repeat_ratio(self) -> float | None:
        if self.repeated_requests is None or not self.requests:
            return None
        return self.repeated_requests / self.requests


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the ceil(q n)-th smallest value (q in (0, 1])."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def parse_profile(record: Any, where: str) -> Profile:
    if not isinstance(record, Mapping):
        raise AnalyzeError(f"{where}: expected a JSON object")
    profile = record.get("profile", record)
    if not isinstance(profile, Mapping) or not isinstance(profile.get("stages"), list):
        raise AnalyzeError(
            f"{where}: no profile (send the request with {PROFILE_HEADER}: 1; a streamed"
            " output has none)"
        )
    stages: dict[str, StageTiming] = {}
    for index, item in enumerate(profile["stages"]):
        try:
            timing = StageTiming(
                name=str(item["name"]),
                start_ms=float(item["start_ms"]),
                end_ms=float(item["end_ms"]),
                cache=item.get("cache"),
            )
        except (KeyError, TypeError, ValueError):
            raise AnalyzeError(
                f"{where}: profile.stages[{index}] needs name, start_ms and end_ms"
            ) from None
        stages[timing.name] = timing
    path = profile.get("critical_path") or []
    total = profile.get("total_ms")
    if not isinstance(total, int | float):
        total = max((timing.end_ms for timing in stages.values()), default=0.0)
    request = record.get("request") if "profile" in record else None
    canonical = None if request is None else json.dumps(request, sort_keys=True)
    return Profile(stages, tuple(str(name) for name in path), float(total), canonical)


def load_profiles(path: str) -> list[Profile]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise AnalyzeError(f"cannot read {path}: {error.strerror or error}") from None
    profiles = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise AnalyzeError(f"{path}:{number}: not JSON: {error}") from None
        profiles.append(parse_profile(record, f"{path}:{number}"))
    if not profiles:
        raise AnalyzeError(f"{path}: no profiles")
    return profiles


def waits(profile: Profile, graph: Mapping[str, Sequence[str]] | None) -> dict[str, float]:
    """Per stage: start minus its dependencies' latest end (both relative to the request)."""
    result = {}
    for name, timing in profile.stages.items():
        if graph is not None and name in graph:
            ends = [profile.stages[dep].end_ms for dep in graph[name] if dep in profile.stages]
        else:
            ends = [
                other.end_ms
                for other in profile.stages.values()
                if other.name != name and other.end_ms <= timing.start_ms
            ]
        ready = max(ends, default=0.0)
        result[name] = max(0.0, timing.start_ms - ready)
    return result


def parse_batch_metrics(text: str) -> dict[str, float]:
    """Mean ``penstock_stage_batch_size`` per stage from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name != "penstock_stage_batch_size":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if sample.name.endswith("_sum"):
                sums[stage] += sample.value
            elif sample.name.endswith("_count"):
                counts[stage] += sample.value
    return {stage: sums[stage] / counts[stage] for stage in counts if counts[stage] > 0}


def analyze(
    profiles: Sequence[Profile],
    spec: PipelineSpec | None = None,
    batch_sizes: Mapping[str, float] | None = None,
) -> Report:
    graph = {stage.name: stage.dependencies for stage in spec.stages} if spec else None
    names: list[str] = []
    for profile in profiles:
        names += [name for name in profile.stages if name not in names]
    durations: dict[str, list[float]] = defaultdict(list)
    wait_times: dict[str, list[float]] = defaultdict(list)
    hit_times: dict[str, list[float]] = defaultdict(list)
    miss_times: dict[str, list[float]] = defaultdict(list)
    on_path: Counter[str] = Counter()
    paths: Counter[tuple[str, ...]] = Counter()
    for profile in profiles:
        paths[profile.critical_path] += 1
        on_path.update(set(profile.critical_path))
        for name, wait in waits(profile, graph).items():
            wait_times[name].append(wait)
        for name, timing in profile.stages.items():
            durations[name].append(timing.duration_ms)
            if timing.cache == "hit":
                hit_times[name].append(timing.duration_ms)
            elif timing.cache == "miss":
                miss_times[name].append(timing.duration_ms)
    count = len(profiles)
    stages = {
        name: StageFigures(
            name=name,
            calls=len(durations[name]),
            mean_ms=mean(durations[name]),
            p50_ms=percentile(durations[name], 0.5),
            p95_ms=percentile(durations[name], 0.95),
            critical_share=on_path[name] / count if count else 0.0,
            wait_mean_ms=mean(wait_times[name]),
            wait_p95_ms=percentile(wait_times[name], 0.95),
            cache_hits=len(hit_times[name]),
            cache_misses=len(miss_times[name]),
            hit_p50_ms=percentile(hit_times[name], 0.5) if hit_times[name] else None,
            miss_p50_ms=percentile(miss_times[name], 0.5) if miss_times[name] else None,
        )
        for name in names
    }
    for name, size in (batch_sizes or {}).items():
        if name in stages:
            stages[name].batch_mean_size = size
            stage = next((s for s in spec.stages if s.name == name), None) if spec else None
            if stage is not None and stage.batching is not None:
                stages[name].batch_fill = size / stage.batching.max_batch_size
    totals = [profile.total_ms for profile in profiles]
    repeated = None
    if all(profile.request is not None for profile in profiles):
        seen: set[str | None] = set()
        repeated = 0
        for profile in profiles:
            repeated += profile.request in seen
            seen.add(profile.request)
    path, path_count = paths.most_common(1)[0] if paths else ((), 0)
    report = Report(
        requests=count,
        total_mean_ms=mean(totals),
        total_p50_ms=percentile(totals, 0.5),
        total_p95_ms=percentile(totals, 0.95),
        stages=stages,
        critical_path=path,
        critical_path_share=path_count / count if count else 0.0,
        repeated_requests=repeated,
    )
    if spec is not None:
        needed = needed_stages(spec)
        report.unused_stages = [stage.name for stage in spec.stages if stage.name not in needed]
    report.recommendations = recommend(report, spec)
    return report


def recommend(report: Report, spec: PipelineSpec | None) -> list[str]:
    """Concrete changes, biggest expected saving first."""
    scored: list[tuple[float, str]] = []
    cached = {stage.name for stage in spec.stages if stage.cache_enabled} if spec else set()
    batched = {stage.name for stage in spec.stages if stage.batching} if spec else set()
    repeat = report.repeat_ratio
    for figures in report.stages.values():
        name = figures.name
        has_cache = name in cached or figures.cache_hits + figures.cache_misses > 0
        critical_ms = figures.mean_ms * figures.critical_share
        if not has_cache and repeat:
            saving = repeat * critical_ms
            scored.append(
                (
                    saving,
                    f"cache {name}: {repeat:.0%} of requests repeat an earlier input; hits would"
                    f" save ~{figures.p50_ms:.1f} ms (its p50) on each, ~{saving:.1f} ms per"
                    f" request on average (on the critical path in"
                    f" {figures.critical_share:.0%} of requests)",
                )
            )
        hit_ms, miss_ms = figures.hit_p50_ms, figures.miss_p50_ms
        if figures.hit_ratio is not None and hit_ms is not None and miss_ms is not None:
            each = max(0.0, miss_ms - hit_ms)
            scored.append(
                (
                    0.0,
                    f"cache {name} works: hit ratio {figures.hit_ratio:.0%}, a hit takes"
                    f" {hit_ms:.1f} ms p50 vs {miss_ms:.1f} ms for a miss ({each:.1f} ms saved"
                    " per hit)",
                )
            )
        if figures.critical_share >= 0.5 and critical_ms > 0:
            saving = critical_ms / 2
            action = "scale" if name in batched else "batch or scale"
            scored.append(
                (
                    saving,
                    f"{action} {name}: it is on the critical path in {figures.critical_share:.0%}"
                    f" of requests and takes {figures.p50_ms:.1f} ms p50 ({figures.p95_ms:.1f} ms"
                    f" p95); halving its time would save up to ~{saving:.1f} ms per request",
                )
            )
        if figures.batch_fill is not None and figures.batch_fill < 0.5:
            scored.append(
                (
                    0.0,
                    f"batch fill of {name} is {figures.batch_fill:.0%} (mean batch"
                    f" {figures.batch_mean_size:.1f}): lower maxLatencyMs or maxBatchSize; the"
                    " batches rarely fill, so waiting for them only adds latency",
                )
            )
        if figures.wait_mean_ms >= 1.0 and figures.wait_mean_ms >= 0.05 * report.total_mean_ms:
            scored.append(
                (
                    figures.wait_mean_ms * figures.critical_share,
                    f"{name} waits {figures.wait_mean_ms:.1f} ms on average (p95"
                    f" {figures.wait_p95_ms:.1f} ms) after its inputs are ready: check the"
                    " router's CPU and its connection to the stage",
                )
            )
    for name in report.unused_stages:
        scored.append(
            (
                0.0,
                f"remove stage {name}: not on any path to the output (the router never calls it,"
                " but its replicas still cost)",
            )
        )
    # Savings too small to act on (under 0.5 ms or 2% of the mean request) are left out.
    floor = max(0.5, 0.02 * report.total_mean_ms)
    kept = [(saving, text) for saving, text in scored if saving == 0.0 or saving >= floor]
    kept.sort(key=lambda item: -item[0])
    return [text for _, text in kept]


# --------------------------------------------------------------------------- output


def render(report: Report) -> str:
    lines = [
        f"{report.requests} requests: end to end mean {report.total_mean_ms:.1f} ms,"
        f" p50 {report.total_p50_ms:.1f} ms, p95 {report.total_p95_ms:.1f} ms",
        "",
        f"{'stage':<16}{'calls':>6}{'mean':>9}{'p50':>9}{'p95':>9}{'critical':>10}"
        f"{'wait':>8}{'cache hit':>11}{'batch fill':>12}",
    ]
    for figures in report.stages.values():
        hit = "-" if figures.hit_ratio is None else f"{figures.hit_ratio:.0%}"
        fill = "-"
        if figures.batch_fill is not None:
            fill = f"{figures.batch_fill:.0%}"
        elif figures.batch_mean_size is not None:
            fill = f"{figures.batch_mean_size:.1f}/batch"
        lines.append(
            f"{figures.name:<16}{figures.calls:>6}{figures.mean_ms:>9.1f}{figures.p50_ms:>9.1f}"
            f"{figures.p95_ms:>9.1f}{figures.critical_share:>10.0%}{figures.wait_mean_ms:>8.1f}"
            f"{hit:>11}{fill:>12}"
        )
    lines += [
        "(milliseconds; critical: share of requests whose critical path has the stage;"
        " wait: mean time after its inputs were ready)",
        "",
        f"critical path: {' -> '.join(report.critical_path) or '-'}"
        f" ({report.critical_path_share:.0%} of requests)",
    ]
    if report.repeated_requests is None:
        lines.append("redundant calls: unknown (the records carry no request bodies)")
    else:
        lines.append(
            f"redundant calls: {report.repeated_requests} of {report.requests} requests repeat an"
            " earlier request body"
        )
    lines += ["", "recommendations:"]
    lines += [f"  - {text}" for text in report.recommendations] or ["  (none)"]
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    return {
        "requests": report.requests,
        "total_ms": {
            "mean": report.total_mean_ms,
            "p50": report.total_p50_ms,
            "p95": report.total_p95_ms,
        },
        "stages": {
            name: {
                "calls": f.calls,
                "mean_ms": f.mean_ms,
                "p50_ms": f.p50_ms,
                "p95_ms": f.p95_ms,
                "critical_share": f.critical_share,
                "wait_mean_ms": f.wait_mean_ms,
                "wait_p95_ms": f.wait_p95_ms,
                "cache_hit_ratio": f.hit_ratio,
                "batch_mean_size": f.batch_mean_size,
                "batch_fill": f.batch_fill,
            }
            for name, f in report.stages.items()
        },
        "critical_path": list(report.critical_path),
        "critical_path_share": report.critical_path_share,
        "repeated_requests": report.repeated_requests,
        "unused_stages": report.unused_stages,
        "recommendations": report.recommendations,
    }


# --------------------------------------------------------------------------- input


def load_spec(path: str) -> PipelineSpec:
    try:
        documents = [body for _, body in load_yaml_file(path)]
    except DocumentError as error:
        raise AnalyzeError(str(error)) from None
    if len(documents) != 1:
        raise AnalyzeError(f"{path}: expected one Pipeline document (got {len(documents)})")
    result = validate_document(documents[0])
    if result.spec is None:
        raise AnalyzeError(f"{path}: invalid Pipeline: {result.summary()}")
    return result.spec


def _post(url: str, body: bytes, timeout: float) -> Any:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", PROFILE_HEADER: "1"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode("utf-8", "replace")
        raise AnalyzeError(f"{url} answered HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise AnalyzeError(f"cannot reach {url}: {error}") from None
    except ValueError:
        raise AnalyzeError(
            f"{url} answered something that is not JSON (a streamed output has no profile;"
            " run penstock dev with --no-stream)"
        ) from None


def collect(url: str, bodies: Iterable[Any], timeout: float) -> list[dict[str, Any]]:
    records = []
    for body in bodies:
        answer = _post(url, json.dumps(body).encode(), timeout)
        if not isinstance(answer, dict) or "profile" not in answer:
            raise AnalyzeError(f"{url} answered without a profile (is it a penstock router?)")
        records.append({"request": body, **answer})
    return records


def read_bodies(path: str, requests: int) -> list[Any]:
    """The request bodies: one JSON document, or JSON lines used in turn, ``requests`` in all."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise AnalyzeError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        bodies = [json.loads(text)]
    except ValueError:
        try:
            bodies = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as error:
            raise AnalyzeError(f"{path}: neither JSON nor JSON lines: {error}") from None
    if not bodies:
        raise AnalyzeError(f"{path}: no request bodies")
    return [bodies[i % len(bodies)] for i in range(requests)]


def fetch_text(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read()).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        raise AnalyzeError(f"cannot read metrics from {url}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penstock analyze",
        description="Per-stage time, critical path, waiting, redundant calls, cache hit ratio,"
        " batch fill and recommendations from router profiles (X-Penstock-Profile: 1).",
        epilog="Waiting time = stage start - request start - the latest finish of its"
        " dependencies. Percentiles are nearest-rank.",
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="JSON lines of profile responses")
    parser.add_argument("--url", help="collect live from this router URL instead")
    parser.add_argument("--requests", type=int, default=20, help="requests with --url (20)")
    parser.add_argument("--body", help="request body file for --url (JSON, or JSON lines)")
    parser.add_argument("--save", help="also write the collected records here (JSON lines)")
    parser.add_argument("--pipeline", help="the Pipeline YAML: exact dependencies, unused stages")
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a gateway admin /metrics URL for batch fill (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    if bool(args.file) == bool(args.url):
        raise AnalyzeError("give either FILE or --url URL (with --body FILE)")
    spec = load_spec(args.pipeline) if args.pipeline else None
    if args.url:
        if not args.body:
            raise AnalyzeError("--url needs --body FILE (the request body)")
        if args.requests < 1:
            raise AnalyzeError(f"--requests must be at least 1 (got {args.requests})")
        started = time.monotonic()
        records = collect(args.url, read_bodies(args.body, args.requests), args.timeout)
        print(
            f"collected {len(records)} profiles in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        if args.save:
            Path(args.save).write_text("".join(json.dumps(r) + "\n" for r in records))
        profiles = [parse_profile(r, f"{args.url} #{i}") for i, r in enumerate(records, 1)]
    else:
        profiles = load_profiles(args.file)
    batch_sizes: dict[str, float] = {}
    for url in args.metrics_url:
        batch_sizes.update(parse_batch_metrics(fetch_text(url, args.timeout)))
    report = analyze(profiles, spec, batch_sizes)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(render(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except AnalyzeError as error:
        print(f"penstock analyze: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
