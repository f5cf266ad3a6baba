"""``penstock analyze --jaeger URL --pipeline-ref NS/NAME``: router profiles from the traces a
cluster already collects, read from Jaeger's query API.

A traced request (``tracing.enabled`` in the Pipeline) leaves these spans
(penstock.dataplane.router.server, penstock.dataplane.gateway.server):

- the router's server span ``pipeline <name>``, service ``<name>.router``, resource attributes
  ``service.namespace`` (the Pipeline's namespace) and ``penstock.pipeline``: the request. Its
  start is the request's start and its duration ``total_ms``;
- a child client span ``stage <stage>`` (attribute ``penstock.stage``) per stage call: the
  stage's ``start_ms``/``end_ms``, relative to the request's start;
- under each, the gateway's server span (service ``<name>.<stage>``) with ``penstock.cache.hit``
  and ``penstock.cost.usd``.

The stage times come from the router's client spans, not the gateways' server spans: the router
takes its profile's start and end around the same call inside that span, so durations and
waiting times mean what they mean with ``X-Penstock-Profile: 1`` (network and connection time to
the gateway included); and they come from the same process clock as the request's span, so no
clock skew between pods enters them.

``penstock.cache.hit`` is ``false`` both for a miss and for a stage without a cache, so a false
counts as a miss only for a stage known to cache: one with ``cache.enabled`` in ``--pipeline``,
else one that hit at least once in the traces read. The cost of a request is the sum of its
gateway spans' ``penstock.cost.usd`` (what the gateway attributed; 0 for a hit).

The critical path is :func:`penstock.api.graph.waited_chain` over the Pipeline's dependencies
when ``--pipeline`` is given; otherwise from the stage that ended last, stepping each time to
the stage that ended last before the current one started (the inference ``waits`` makes).

Only the router spans of the Pipeline named (service ``<name>.router`` whose namespace, from
``service.namespace`` or ``k8s.namespace.name``, matches) become profiles; requests whose
router span has an error status are left out (a failed request has no profile either).

:func:`profiles_from_jaeger` is the pure conversion of one ``/api/traces`` answer;
:func:`fetch_profiles` does the HTTP. Every malformed answer is an :class:`AnalyzeError` naming
the URL and the field, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from penstock.api import PipelineSpec
from penstock.api import graph as stage_graph
from penstock.api.types import DNS1123_LABEL
from penstock.contract.profile import Profile, StageTiming
from penstock.contract.wire import (
    ATTR_CACHE_HIT,
    ATTR_COST_USD,
    ATTR_INPUT_TOKENS,
    ATTR_OUTPUT_TOKENS,
    ATTR_PIPELINE,
    ATTR_SAVED_REASON,
    ATTR_SAVED_USD,
    ATTR_STAGE,
)
from penstock.dev.profiles import MAX_ANSWER_BYTES, AnalyzeError, UsageError
from penstock.dev.report import Report
from penstock.errors import bounded, short_repr

DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000
DEFAULT_SINCE = "1h"
MAX_SINCE_SECONDS = 366 * 86400
MAX_SPANS_PER_TRACE = 10_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(DNS1123_LABEL)


@dataclass(frozen=True)
class TracedProfile(Profile):
    """A profile read from a trace, with what its gateways attributed in USD per stage."""

    costs: Mapping[str, float] = field(default_factory=dict)
    saved: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    """Per stage: why and how many USD its gateway saved (penstock.saved.*), when it did."""
    tokens: Mapping[str, int] = field(default_factory=dict)
    """Per stage: the tokens it reported (gen_ai.usage.input_tokens + output_tokens)."""


@dataclass
class Conversion:
    profiles: list[TracedProfile]
    traces: int  # traces in the answer
    failed: int  # requests of the Pipeline left out: their router span has an error status
    foreign: int  # traces without a request of the Pipeline (another namespace, say)
    incomplete: int = 0  # requests without any stage span (not exported yet, or lost)


# --------------------------------------------------------------------------- options


def parse_ref(text: str) -> tuple[str, str]:
    """``NS/NAME`` -> (namespace, name), or a UsageError."""
    namespace, _, name = text.partition("/")
    if not all(len(part) <= 63 and _NAME.match(part) for part in (namespace, name)):
        raise UsageError(
            f"--pipeline-ref must be NAMESPACE/NAME, both DNS labels (got {short_repr(text)})"
        )
    return namespace, name


def parse_since(text: str, flag: str = "--since") -> float:
    """``1h``, ``30m``, ``1h30m``, ``90s``, ``2d`` -> seconds, or a UsageError."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if "".join(n + u for n, u in parts) != text or not 0 < seconds <= MAX_SINCE_SECONDS:
        raise UsageError(
            f"{flag} must be a duration such as 1h, 30m, 1h30m or 2d, at most 366d"
            f" (got {short_repr(text)})"
        )
    return seconds


def check_options(args: argparse.Namespace) -> None:
    """analyze's options that go with ``--jaeger`` (and those that need it); UsageError."""
    if not args.jaeger:
        given = [flag for flag in ("pipeline_ref", "since", "until", "limit") if getattr(args, flag) is not None]  # fmt: skip
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            raise UsageError(f"{flags}: only with --jaeger URL")
        return
    others = [
        flag
        for flag, value in [
            ("FILE", args.file),
            ("--url", args.url),
            ("--body", args.body),
            ("--wait", args.wait),
            ("--compare", getattr(args, "compare", None)),
        ]
        if value
    ]
    if others:
        raise UsageError(f"--jaeger URL does not go with {', '.join(others)}")
    parts = urlsplit(args.jaeger)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise UsageError(
            f"--jaeger must be the http(s) URL of Jaeger's query service, e.g."
            f" http://jaeger:16686 (got {short_repr(args.jaeger)})"
        )
    if args.pipeline_ref is None:
        raise UsageError("--jaeger needs --pipeline-ref NAMESPACE/NAME (whose traces to read)")
    parse_ref(args.pipeline_ref)
    since = parse_since(DEFAULT_SINCE if args.since is None else args.since)
    if args.until is not None and parse_since(args.until, "--until") >= since:
        raise UsageError(
            f"--until {args.until} must be less long ago than --since"
            f" {args.since or DEFAULT_SINCE} (the window runs from --since ago to --until ago)"
        )
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be 1 to {MAX_LIMIT} (got {limit})")


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class _Span:
    span_id: str
    parent: str | None
    operation: str
    start_us: int
    duration_us: int
    tags: dict[str, Any]
    service: str
    resource: dict[str, Any]

    @property
    def kind(self) -> Any:
        return self.tags.get("span.kind")

    @property
    def failed(self) -> bool:
        return self.tags.get("error") is True or self.tags.get("otel.status_code") == "ERROR"


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a whole number"}


def _get(node: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = node.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise AnalyzeError(
            bounded(f"{where}.{key} must be {_KINDS[kind]} (got {short_repr(value)})")
        )
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise AnalyzeError(bounded(f"{where} must be an object (got {short_repr(value)})"))
    return value


def _tags(node: Mapping[str, Any], where: str) -> dict[str, Any]:
    items = node.get("tags")
    if items is None:  # Jaeger leaves it out when empty
        return {}
    if not isinstance(items, list):
        raise AnalyzeError(bounded(f"{where}.tags must be a list (got {short_repr(items)})"))
    tags = {}
    for index, item in enumerate(items):
        tag = _object(item, f"{where}.tags[{index}]")
        tags[_get(tag, "key", str, f"{where}.tags[{index}]")] = tag.get("value")
    return tags


def _spans(trace: Mapping[str, Any], where: str) -> list[_Span]:
    processes = _get(trace, "processes", dict, where)
    resources: dict[str, tuple[str, dict[str, Any]]] = {}
    for pid, process in processes.items():
        at = f"{where}.processes[{pid!r}]"
        process = _object(process, at)
        resources[pid] = (_get(process, "serviceName", str, at), _tags(process, at))
    items = _get(trace, "spans", list, where)
    if len(items) > MAX_SPANS_PER_TRACE:
        raise AnalyzeError(f"{where}.spans: more than {MAX_SPANS_PER_TRACE} spans in one trace")
    spans = []
    for index, item in enumerate(items):
        at = f"{where}.spans[{index}]"
        span = _object(item, at)
        pid = _get(span, "processID", str, at)
        if pid not in resources:
            raise AnalyzeError(bounded(f"{at}.processID {pid!r} is not in {where}.processes"))
        references = span.get("references") or []
        if not isinstance(references, list):
            raise AnalyzeError(bounded(f"{at}.references must be a list"))
        parent = None
        for number, reference in enumerate(references):
            ref = _object(reference, f"{at}.references[{number}]")
            if ref.get("refType") == "CHILD_OF":
                parent = _get(ref, "spanID", str, f"{at}.references[{number}]")
                break
        start, duration = _get(span, "startTime", int, at), _get(span, "duration", int, at)
        if start < 0 or duration < 0:
            raise AnalyzeError(f"{at}: startTime and duration must not be negative")
        service, resource = resources[pid]
        spans.append(
            _Span(
                _get(span, "spanID", str, at),
                parent,
                _get(span, "operationName", str, at),
                start,
                duration,
                _tags(span, at),
                service,
                resource,
            )
        )
    return spans


def _namespace_of(span: _Span) -> Any:
    for value in (
        span.resource.get("service.namespace"),
        span.resource.get("k8s.namespace.name"),
        span.tags.get("k8s.namespace.name"),
    ):
        if value:
            return value
    return None


def _is_request(span: _Span, namespace: str, pipeline: str) -> bool:
    """The router's server span of one request of NS/NAME."""
    return (
        span.service == f"{pipeline}.router"
        and span.kind == "server"
        and span.operation == f"pipeline {pipeline}"
        and span.resource.get(ATTR_PIPELINE, pipeline) == pipeline
        and _namespace_of(span) == namespace
    )


def _stage_name(span: _Span, where: str) -> str:
    name = span.tags.get(ATTR_STAGE, span.operation.removeprefix("stage "))
    if not (isinstance(name, str) and 0 < len(name) <= 128 and name.isprintable()):
        raise AnalyzeError(bounded(f"{where}: {ATTR_STAGE} must be a stage name (got {short_repr(name)})"))  # fmt: skip
    return name


def _cost(span: _Span, where: str) -> float:
    value = span.tags.get(ATTR_COST_USD, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:  # fmt: skip
        raise AnalyzeError(bounded(f"{where}: {ATTR_COST_USD} must be a number of USD, 0 or more (got {short_repr(value)})"))  # fmt: skip
    return float(value)


def _hit(span: _Span, where: str) -> bool | None:
    value = span.tags.get(ATTR_CACHE_HIT)
    if value is not None and not isinstance(value, bool):
        raise AnalyzeError(bounded(f"{where}: {ATTR_CACHE_HIT} must be true or false (got {short_repr(value)})"))  # fmt: skip
    return value


@dataclass
class _Call:
    start_ms: float
    end_ms: float
    hit: bool | None = None  # the gateway span's penstock.cache.hit
    cost: float = 0.0
    saved: tuple[str, float] | None = None  # penstock.saved.reason, penstock.saved.usd
    tokens: int = 0


def _saved(span: _Span) -> tuple[str, float] | None:
    """What the gateway span says it saved; a malformed figure is left out, not an error (it
    only adds to the report)."""
    reason, amount = span.tags.get(ATTR_SAVED_REASON), span.tags.get(ATTR_SAVED_USD)
    if not isinstance(reason, str) or not reason.isidentifier():
        return None
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        return None
    return reason, max(0.0, float(amount))


def _tokens(span: _Span) -> int:
    total = 0
    for name in (ATTR_INPUT_TOKENS, ATTR_OUTPUT_TOKENS):
        value = span.tags.get(name, 0)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9:
            total += value
    return total


def _critical_path(
    ends: Mapping[str, float], starts: Mapping[str, float], spec: PipelineSpec | None
) -> tuple[str, ...]:
    if not ends:
        return ()
    if spec is not None and spec.output_stage in ends:
        return tuple(stage_graph.waited_chain(spec.graph, spec.output_stage, ends))
    # No Pipeline: a stage's dependencies are inferred as the stages that ended before it started.
    inferred = {
        name: [other for other in ends if other != name and ends[other] <= starts[name]]
        for name in ends
    }
    output = max(ends, key=lambda name: ends[name])
    return tuple(stage_graph.waited_chain(inferred, output, ends))


def convert(
    document: Any,
    namespace: str,
    pipeline: str,
    *,
    spec: PipelineSpec | None = None,
    where: str = "Jaeger answer",
) -> Conversion:
    """One Jaeger ``/api/traces`` answer -> a profile per request of NS/NAME, oldest first."""
    answer = _object(document, where)
    if answer.get("errors"):
        raise AnalyzeError(bounded(f"{where}: Jaeger answered errors: {short_repr(answer['errors'], 300)}"))  # fmt: skip
    if "data" not in answer:
        raise AnalyzeError(f"{where}: no data field (is it Jaeger's query API, /api/traces?)")
    traces = [] if answer["data"] is None else answer["data"]  # null when nothing matched
    if not isinstance(traces, list):
        raise AnalyzeError(bounded(f"{where}.data must be a list of traces (got {short_repr(traces)})"))  # fmt: skip
    requests: list[tuple[int, dict[str, _Call], float]] = []
    failed = foreign = incomplete = 0
    for index, item in enumerate(traces):
        at = f"{where}: data[{index}]"
        spans = _spans(_object(item, at), at)
        children: dict[str, list[_Span]] = {}
        for span in spans:
            if span.parent is not None:
                children.setdefault(span.parent, []).append(span)
        roots = [span for span in spans if _is_request(span, namespace, pipeline)]
        foreign += not roots
        for root in roots:
            if root.failed:
                failed += 1
                continue
            calls: dict[str, _Call] = {}
            for call in children.get(root.span_id, []):
                if call.kind != "client" or call.service != root.service:
                    continue
                name = _stage_name(call, f"{at} span {call.span_id}")
                start = (call.start_us - root.start_us) / 1000
                timing = _Call(start, start + call.duration_us / 1000)
                for served in children.get(call.span_id, []):
                    if served.kind == "server":
                        timing.hit = _hit(served, f"{at} span {served.span_id}")
                        timing.cost += _cost(served, f"{at} span {served.span_id}")
                        timing.saved = _saved(served) or timing.saved
                        timing.tokens += _tokens(served)
                calls.setdefault(name, timing)  # the router calls a stage once per request
            if not calls:  # every request calls its output stage at least
                incomplete += 1
                continue
            requests.append((root.start_us, calls, root.duration_us / 1000))
    requests.sort(key=lambda request: request[0])
    if spec is not None:
        caching: Collection[str] = {s.name for s in spec.stages if s.cache_enabled}
    else:
        caching = {name for _, calls, _ in requests for name, c in calls.items() if c.hit}
    order = [s.name for s in spec.stages] if spec is not None else []
    profiles = []
    for _, calls, total in requests:
        names = sorted(calls, key=lambda n: (order.index(n) if n in order else len(order), calls[n].start_ms))  # fmt: skip
        stages = {
            name: StageTiming(
                name,
                calls[name].start_ms,
                calls[name].end_ms,
                _cache_state(calls[name].hit, name in caching),
            )
            for name in names
        }
        ends = {name: timing.end_ms for name, timing in stages.items()}
        starts = {name: timing.start_ms for name, timing in stages.items()}
        profiles.append(
            TracedProfile(
                stages,
                _critical_path(ends, starts, spec),
                total,
                costs={name: calls[name].cost for name in names},
                saved={name: saved for name in names if (saved := calls[name].saved)},
                tokens={name: calls[name].tokens for name in names if calls[name].tokens},
            )
        )
    return Conversion(profiles, len(traces), failed, foreign, incomplete)


def _cache_state(hit: bool | None, caching: bool) -> str | None:
    if hit is None:
        return None
    if hit:
        return "hit"
    return "miss" if caching else None


def profiles_from_jaeger(
    document: Any,
    namespace: str,
    pipeline: str,
    *,
    spec: PipelineSpec | None = None,
    where: str = "Jaeger answer",
) -> list[TracedProfile]:
    """The profiles of NS/NAME's requests in one Jaeger ``/api/traces`` answer, oldest first."""
    return convert(document, namespace, pipeline, spec=spec, where=where).profiles


# --------------------------------------------------------------------------- costs


def add_costs(report: Report, profiles: Sequence[Profile]) -> None:
    """Mean USD per request (over all and per stage), what the gateways saved per request and
    why, and USD per 1M tokens of the stages that report tokens, when the traces carry them."""
    traced = [p for p in profiles if isinstance(p, TracedProfile)]
    if not profiles or not traced:
        return
    count = len(profiles)
    if any(p.costs for p in traced):
        report.cost_per_request_usd = sum(sum(p.costs.values()) for p in traced) / count
    saved: dict[str, float] = {}
    for profile in traced:
        for reason, amount in profile.saved.values():
            saved[reason] = saved.get(reason, 0.0) + amount / count
    report.saved_per_request_usd = dict(sorted(saved.items())) or None
    for name, figures in report.stages.items():
        # per request of the report, not per call: the stages' figures add up to the total
        cost = sum(p.costs.get(name, 0.0) for p in traced)
        if report.cost_per_request_usd is not None:
            figures.cost_usd = cost / count
        figures.saved_usd = sum(p.saved[name][1] for p in traced if name in p.saved) / count
        tokens = sum(p.tokens.get(name, 0) for p in traced)
        if tokens:
            figures.tokens_per_request = tokens / count
            figures.cost_per_million_tokens_usd = cost / tokens * 1e6


# --------------------------------------------------------------------------- HTTP


def get_json(url: str, timeout: float) -> Any:
    """GET ``url`` as JSON (at most MAX_ANSWER_BYTES), or an AnalyzeError naming it."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as error:
        detail = error.read(300).decode("utf-8", "replace")
        raise AnalyzeError(bounded(f"{url} answered HTTP {error.code}: {detail}")) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AnalyzeError(bounded(f"cannot reach {url}: {error}")) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise AnalyzeError(
            f"{url} answered more than {MAX_ANSWER_BYTES} bytes (lower --limit or --since)"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise AnalyzeError(
            bounded(f"{url} answered something that is not JSON (is it Jaeger's query port?)")
        ) from None


def fetch_profiles(
    base: str,
    namespace: str,
    pipeline: str,
    since_seconds: float,
    limit: int,
    timeout: float,
    spec: PipelineSpec | None = None,
    until_seconds: float = 0.0,
) -> Conversion:
    """The profiles of NS/NAME's requests from ``since_seconds`` ago to ``until_seconds`` ago
    (now by default) from Jaeger at ``base``."""
    base = base.rstrip("/")
    service = f"{pipeline}.router"
    services_url = f"{base}/api/services"
    services = _object(get_json(services_url, timeout), services_url).get("data") or []
    if not isinstance(services, list):
        raise AnalyzeError(f"{services_url}: data must be a list of service names")
    if service not in services:
        known = ", ".join(sorted(str(s) for s in services)[:10]) or "none"
        raise AnalyzeError(
            bounded(
                f"{services_url}: Jaeger has no traces of {service} (the router of"
                f" {namespace}/{pipeline}; does the Pipeline set tracing.enabled, and does its"
                f" collector export here?); services: {known}"
            )
        )
    now = time.time()
    end = now - until_seconds
    query = {
        "service": service,
        "start": int((now - since_seconds) * 1e6),  # Jaeger takes microseconds
        "end": int(end * 1e6),
        "limit": limit,
    }
    url = f"{base}/api/traces?{urlencode(query)}"
    result = convert(get_json(url, timeout), namespace, pipeline, spec=spec, where=url)
    if not result.profiles:
        raise AnalyzeError(
            bounded(
                f"{url}: no requests of {namespace}/{pipeline} in the answer ({result.traces}"
                f" traces: {result.failed} failed requests, {result.incomplete} without stage"
                f" spans, {result.foreign} of other pipelines or namespaces)"
            )
        )
    return result


def read_profiles(args: argparse.Namespace, spec: PipelineSpec | None) -> list[Profile]:
    """The profiles analyze's ``--jaeger`` options ask for (a line on stderr says what was read)."""
    namespace, pipeline = parse_ref(args.pipeline_ref)
    since = DEFAULT_SINCE if args.since is None else args.since
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    until = 0.0 if args.until is None else parse_since(args.until, "--until")
    result = fetch_profiles(
        args.jaeger, namespace, pipeline, parse_since(since), limit, args.timeout, spec, until
    )
    full = f"; --limit {limit} reached: a sample" if result.traces >= limit else ""
    print(
        f"read {len(result.profiles)} requests of {namespace}/{pipeline} from {result.traces}"
        f" traces of the last {since}{f' up to {args.until} ago' if args.until else ''} (left out: {result.failed} failed requests,"
        f" {result.incomplete} without stage spans{full})",
        file=sys.stderr,
    )
    return list[Profile](result.profiles)
