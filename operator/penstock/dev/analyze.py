"""``penstock analyze``: what a Pipeline's time goes to, and what to change, from router profiles.

Input: a file of JSON lines, each a router response to a request sent with
``X-Penstock-Profile: 1`` (``{"output", "profile": {"stages", "critical_path", "total_ms"}}``, or
the bare profile), optionally with ``"request": <the request body>``; or ``--url URL --requests N
--body FILE`` to collect them from a running router (``--save FILE`` keeps them); or ``--jaeger
URL --pipeline-ref NS/NAME [--since 1h] [--limit 500]`` to read them from the traces Jaeger holds
of that Pipeline's router (penstock.dev.traces; ``--pipeline`` stays the YAML file, whose
dependencies then give the critical path; the report adds the mean cost per request and stage).

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
- per variant of a stage with variants (the profile's ``attempts``): calls, served, escalated for
  low confidence, failed, answers at or above the stage's minConfidence, mean and p50;
- batch fill per stage, with ``--metrics-url`` (a gateway's admin ``/metrics``, repeatable): mean
  of ``penstock_stage_batch_size`` over the batch's ``maxBatchSize`` (needs ``--pipeline``; the
  mean size alone otherwise).

Cascades: when a stage's light variant (its first) answered with confidence at or above
minConfidence in most of its calls under another policy (weighted, budget), a cascade is
recommended with its expected mean (light + escalated share x heavy); when a cascade escalates
most requests, the heavy variant alone is. At least 10 calls of each variant are needed.

Recommendations carry an expected saving per request, counted only while the stage is on the
critical path (time off the critical path does not shorten the answer); savings under 0.5 ms or
2% of the mean request time are not worth a change and are left out.

``--compare BEFORE AFTER`` (two profile files, in place of FILE or ``--url``) prints both
sets side by side instead: end to end and per stage p50/p95, and with ``--pipeline`` the
cost per request and per stage; each with its change and a 95% bootstrap confidence
interval of the change (``--bootstrap N`` resamples, ``--seed``), and "within noise" unless
the interval excludes 0 (penstock.dev.compare).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable
from penstock.contract.profile import Profile, StageTiming
from penstock.dev import traces
from penstock.dev.compare import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    MAX_RESAMPLES,
    MIN_RESAMPLES,
    compare,
    comparison_json,
    render_comparison,
)
from penstock.dev.costs import replica_rates
from penstock.dev.html import load_prices, render_html, write_html
from penstock.dev.profiles import (
    AnalyzeError,
    UsageError,
    collect,
    fetch_text,
    load_profiles,
    load_spec,
    parse_batch_metrics,
    parse_profile,
    read_bodies,
)
from penstock.dev.report import Report, StageFigures, VariantFigures, as_json, render
from penstock.dev.stats import percentile
from penstock.errors import short_repr

__all__ = [
    "AnalyzeError",
    "Profile",
    "StageTiming",
    "analyze",
    "as_json",
    "load_spec",
    "main",
    "parse_batch_metrics",
    "parse_profile",
    "percentile",
    "render",
    "waits",
]
MAX_REQUESTS = 100_000
MIN_VARIANT_CALLS = 10  # of each variant, before a cascade is recommended for or against


# --------------------------------------------------------------------------- figures


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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
    for name, figures in stages.items():
        figures.variants = variant_figures(profiles, name, spec)
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
        needed = spec.needed_stages()
        report.unused_stages = [stage.name for stage in spec.stages if stage.name not in needed]
    report.recommendations = recommend(report, spec)
    return report


def variant_figures(
    profiles: Sequence[Profile], name: str, spec: PipelineSpec | None
) -> dict[str, VariantFigures]:
    """Per variant of stage ``name``, lightest first (the Pipeline's order, else by mean)."""
    stage = next((s for s in spec.stages if s.name == name), None) if spec else None
    threshold = stage.policy.min_confidence if stage else 0.5
    attempts = [a for p in profiles if name in p.stages for a in p.stages[name].attempts]
    if not attempts:
        return {}
    durations: dict[str, list[float]] = defaultdict(list)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for attempt in attempts:
        durations[attempt.variant].append(attempt.duration_ms)
        outcomes[attempt.variant][attempt.outcome] += 1
        confident = attempt.confidence is None or attempt.confidence >= threshold
        outcomes[attempt.variant]["confident"] += attempt.outcome != "failed" and confident
    figures = [
        VariantFigures(
            name=variant,
            calls=len(times),
            served=outcomes[variant]["served"],
            low_confidence=outcomes[variant]["low_confidence"],
            failed=outcomes[variant]["failed"],
            confident=outcomes[variant]["confident"],
            mean_ms=mean(times),
            p50_ms=percentile(times, 0.5),
        )
        for variant, times in durations.items()
    ]
    declared = [v.name for v in stage.variants] if stage and stage.variants else []
    figures.sort(
        key=lambda f: (declared.index(f.name), 0.0) if f.name in declared else (99, f.mean_ms)
    )
    return {f.name: f for f in figures}


def recommend_variants(
    figures: StageFigures, spec: PipelineSpec | None
) -> tuple[float, str] | None:
    """For or against a cascade of the stage's variants (saving per request, text)."""
    if len(figures.variants) < 2:
        return None
    variants = list(figures.variants.values())
    light, heavy = variants[0], variants[-1]
    if min(light.calls, heavy.calls) < MIN_VARIANT_CALLS:
        return None
    stage = next((s for s in spec.stages if s.name == figures.name), None) if spec else None
    escalations = light.low_confidence + light.failed
    cascading = stage.policy.type == "cascade" if stage else escalations > 0
    if cascading:
        escalated = escalations / light.calls
        if escalated <= 0.5:
            return None
        saving = max(0.0, (figures.mean_ms - heavy.mean_ms) * figures.critical_share)
        return saving, (
            f"{heavy.name} alone for {figures.name}: the cascade escalated {escalated:.0%} of"
            f" {light.calls} calls of {light.name} ({light.low_confidence} low confidence,"
            f" {light.failed} failed), so {light.name} mostly adds its {light.mean_ms:.1f} ms;"
            f" the stage took {figures.mean_ms:.1f} ms mean vs {heavy.mean_ms:.1f} ms for"
            f" {heavy.name} (or lower variantPolicy.minConfidence)"
        )
    kept = light.confident_share
    if kept < 0.5:
        return None
    expected_ms = light.mean_ms + (1 - kept) * heavy.mean_ms
    heavy_now = heavy.calls / figures.calls if figures.calls else 0.0
    if expected_ms >= figures.mean_ms and 1 - kept >= heavy_now:
        return None
    saving = max(0.0, (figures.mean_ms - expected_ms) * figures.critical_share)
    return saving, (
        f"variantPolicy {{type: cascade}} for {figures.name}: {light.name} answered confidently"
        f" in {kept:.0%} of its {light.calls} calls, so a cascade would call {heavy.name} on"
        f" ~{1 - kept:.0%} of requests (now {heavy_now:.0%}) and take ~{expected_ms:.1f} ms"
        f" mean ({light.mean_ms:.1f} + {1 - kept:.0%} x {heavy.mean_ms:.1f}) vs"
        f" {figures.mean_ms:.1f} ms now"
    )


def recommend(report: Report, spec: PipelineSpec | None) -> list[str]:
    """Concrete changes, biggest expected saving first."""
    # Savings too small to act on (under 0.5 ms or 2% of the mean request) are left out.
    floor = max(0.5, 0.02 * report.total_mean_ms)
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
        cascade = recommend_variants(figures, spec)
        if cascade is not None:
            # A cascade also saves the heavy variant's cost: kept when its time saving is small.
            saving, text = cascade
            scored.append((saving if saving >= floor else 0.0, text))
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
    kept = [(saving, text) for saving, text in scored if saving == 0.0 or saving >= floor]
    kept.sort(key=lambda item: -item[0])
    return [text for _, text in kept]


_EPILOG = """\
Waiting time = stage start - request start - the latest finish of its dependencies.
Percentiles are nearest-rank.

--compare BEFORE AFTER: each figure of both sets, the change and its 95% confidence
interval by bootstrap (--bootstrap N resamples of each set, --seed S: the same seed, the
same output); a row is faster/slower (cheaper/dearer) only when the interval excludes 0.

--jaeger URL --pipeline-ref NS/NAME [--since 1h] [--until 0s] [--limit 500]: the requests
from --since ago to --until ago in Jaeger's traces of that Pipeline's router (stage times from the router's client
spans, cache and cost from the gateways' spans; at most --limit traces, at most 10000).

--wait SECONDS retries the first request while the router cannot be reached or answers
502/503/504 (e.g. right after starting penstock dev), so a script need not poll first.

exit status: 0 with a report; 1 when an input cannot be used (a file that is missing, not
UTF-8, not JSON lines of profiles; a Pipeline that is invalid; a router, --jaeger or
--metrics-url that cannot be reached or does not answer what it should), with one line 'penstock analyze:
error: ...' on stderr; 2 for options that do not go together or are out of range."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penstock analyze",
        description="Per-stage time, critical path, waiting, redundant calls, cache hit ratio,"
        " batch fill and recommendations from router profiles (X-Penstock-Profile: 1).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", nargs="?", metavar="FILE", help="JSON lines of profile responses")
    parser.add_argument("--url", help="collect live from this router URL instead")
    parser.add_argument("--requests", type=int, default=20, help="requests with --url (20)")
    parser.add_argument("--body", help="request body file for --url (JSON, or JSON lines)")
    parser.add_argument("--save", help="also write the collected records here (JSON lines)")
    parser.add_argument("--pipeline", help="the Pipeline YAML: exact dependencies, unused stages")
    parser.add_argument(
        "--jaeger",
        metavar="URL",
        help="instead of FILE or --url: read the requests from Jaeger's query API at URL"
        " (e.g. http://jaeger:16686), one profile per traced request",
    )
    parser.add_argument(
        "--pipeline-ref",
        metavar="NS/NAME",
        help="with --jaeger: the Pipeline whose router's traces to read (--pipeline stays the"
        " YAML file)",
    )
    parser.add_argument(
        "--since",
        metavar="DURATION",
        help=f"with --jaeger: how far back, e.g. 30m, 1h30m, 2d ({traces.DEFAULT_SINCE})",
    )
    parser.add_argument(
        "--until",
        metavar="DURATION",
        help="with --jaeger: the window ends that long ago (default: now); with --save, two"
        " windows become two files for --compare",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help=f"with --jaeger: at most N traces ({traces.DEFAULT_LIMIT}; at most"
        f" {traces.MAX_LIMIT})",
    )
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        help="a gateway admin /metrics URL for batch fill (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --url: wait up to SECONDS for the router to answer (default 0: no wait)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="instead of FILE or --url: compare two profile files (p50/p95, cost per request with"
        " --pipeline) with bootstrap confidence intervals of the change",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help=f"with --compare: resamples of each set ({DEFAULT_RESAMPLES}; {MIN_RESAMPLES} to"
        f" {MAX_RESAMPLES})",
    )
    parser.add_argument(
        "--seed", type=int, help=f"with --compare: seed of the resampling ({DEFAULT_SEED})"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML page: a typical request's waterfall, per-stage"
        " latency, cost per stage (needs --pipeline), recommendations",
    )
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="with --pipeline: a price table YAML (as the operator's) for the costs",
    )
    return parser


def _check_compare(args: argparse.Namespace) -> None:
    if not args.compare:
        if args.bootstrap is not None or args.seed is not None:
            raise UsageError("--bootstrap and --seed need --compare BEFORE AFTER")
        return
    given = [
        flag
        for flag, value in [
            ("FILE", args.file),
            ("--url", args.url),
            ("--body", args.body),
            ("--save", args.save),
            ("--metrics-url", args.metrics_url),
            ("--html", args.html),
        ]
        if value
    ]
    if given:
        raise UsageError(f"--compare BEFORE AFTER does not go with {', '.join(given)}")
    if args.bootstrap is not None and not MIN_RESAMPLES <= args.bootstrap <= MAX_RESAMPLES:
        raise UsageError(
            f"--bootstrap must be {MIN_RESAMPLES} to {MAX_RESAMPLES} (got {args.bootstrap})"
        )
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be 0 or more (got {args.seed})")


def _check_options(args: argparse.Namespace) -> None:
    _check_compare(args)
    traces.check_options(args)
    if not (args.compare or args.jaeger) and bool(args.file) == bool(args.url):
        raise UsageError("give either FILE or --url URL (with --body FILE), or --compare")
    if args.url and not args.body:
        raise UsageError("--url needs --body FILE (the request body)")
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be 1 to {MAX_REQUESTS} (got {args.requests})")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UsageError(f"--timeout must be a positive number of seconds (got {args.timeout})")
    if not (args.wait >= 0 and math.isfinite(args.wait)):
        raise UsageError(f"--wait must be 0 or more seconds (got {args.wait})")
    if args.wait and not args.url:
        raise UsageError("--wait needs --url (it waits for the router)")
    if args.prices and not args.pipeline:
        raise UsageError("--prices needs --pipeline FILE (it prices the Pipeline's stages)")
    for flag, url in [("--url", args.url), *[("--metrics-url", u) for u in args.metrics_url]]:
        parts = urlsplit(url) if url else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise UsageError(f"{flag} must be an http(s) URL (got {short_repr(url)})")


def _run_compare(
    args: argparse.Namespace, spec: PipelineSpec | None, prices: PriceTable | None
) -> int:
    before, after = (load_profiles(path) for path in args.compare)
    comparison = compare(
        before,
        after,
        replica_rates(spec, prices),
        resamples=DEFAULT_RESAMPLES if args.bootstrap is None else args.bootstrap,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        labels=(args.compare[0], args.compare[1]),
    )
    if args.json:
        print(json.dumps(comparison_json(comparison), indent=2))
    else:
        print(render_comparison(comparison))
    return 0


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as error:
        raise AnalyzeError(f"cannot write {path}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    spec = load_spec(args.pipeline) if args.pipeline else None
    prices = load_prices(args.prices) if args.prices else None  # before a long --url run
    if args.compare:
        return _run_compare(args, spec, prices)
    if args.url:
        bodies = read_bodies(args.body, args.requests)
        started = time.monotonic()
        records = collect(args.url, bodies, args.timeout, args.wait)
        print(
            f"collected {len(records)} profiles in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        if args.save:
            _write(args.save, "".join(json.dumps(r) + "\n" for r in records))
        profiles = [parse_profile(r, f"{args.url} #{i}") for i, r in enumerate(records, 1)]
    elif args.jaeger:
        profiles = traces.read_profiles(args, spec)
        if args.save:  # as router profile records: --compare reads them back
            lines = "".join(json.dumps({"profile": p.to_document()}) + "\n" for p in profiles)
            _write(args.save, lines)
    else:
        profiles = load_profiles(args.file)
    batch_sizes: dict[str, float] = {}
    for url in args.metrics_url:
        batch_sizes.update(parse_batch_metrics(fetch_text(url, args.timeout), url))
    report = analyze(profiles, spec, batch_sizes)
    traces.add_costs(report, profiles)  # a no-op unless the profiles come from traces
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(render(report))
    if args.html:
        page = render_html(report, profiles, spec, replica_rates(spec, prices))
        write_html(args.html, page)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 (a report), 1 (an input cannot be used) or 2 (bad options)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"penstock analyze: error: {error}", file=sys.stderr)
        return 2
    except AnalyzeError as error:
        print(f"penstock analyze: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
