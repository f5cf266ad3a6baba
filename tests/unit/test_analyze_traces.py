"""penstock analyze --jaeger: a Jaeger /api/traces answer -> router profiles (penstock.dev.traces).

CAPTURED is one trace as a real Jaeger v2 answered it (tests/integration/test_analyze_jaeger.py
runs that stack: router and gateways of search/qa, retrieve -> answer, each stage sleeping 20
ms), trimmed to the tags the conversion reads plus a few it must ignore."""

from __future__ import annotations

import copy
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penstock.api import PipelineSpec
from penstock.api.validation import validate_document
from penstock.contract.profile import StageTiming
from penstock.dev import traces
from penstock.dev.analyze import analyze, main
from penstock.dev.profiles import AnalyzeError
from penstock.dev.report import as_json, render
from penstock.dev.traces import TracedProfile, convert, parse_since, profiles_from_jaeger
from penstock.errors import MAX_MESSAGE
from tests.support import free_port

CAPTURED: dict[str, Any] = json.loads(
    """
{
 "traceID": "26985779373a64532c021e6771a16994",
 "spans": [
  {"traceID": "26985779373a64532c021e6771a16994", "spanID": "cf75aebba82027e3", "operationName": "POST answer", "startTime": 1796190231039860, "duration": 34149, "processID": "p1",
   "references": [{"refType": "CHILD_OF", "traceID": "26985779373a64532c021e6771a16994", "spanID": "995071c9583f97ab"}],
   "logs": [], "warnings": null, "tags": [
    {"key": "http.response.status_code", "type": "int64", "value": 200},
    {"key": "k8s.namespace.name", "type": "string", "value": "search"},
    {"key": "penstock.cache.hit", "type": "bool", "value": false},
    {"key": "penstock.cost.usd", "type": "float64", "value": 6.732975800014174e-05},
    {"key": "penstock.pipeline", "type": "string", "value": "qa"},
    {"key": "penstock.stage", "type": "string", "value": "answer"},
    {"key": "span.kind", "type": "string", "value": "server"}
  ]},
  {"traceID": "26985779373a64532c021e6771a16994", "spanID": "40b10df3ed4ab0ea", "operationName": "stage retrieve", "startTime": 1796190231015500, "duration": 23395, "processID": "p2",
   "references": [{"refType": "CHILD_OF", "traceID": "26985779373a64532c021e6771a16994", "spanID": "09e7e3ae0917367b"}],
   "logs": [], "warnings": null, "tags": [
    {"key": "k8s.namespace.name", "type": "string", "value": "search"},
    {"key": "penstock.pipeline", "type": "string", "value": "qa"},
    {"key": "penstock.stage", "type": "string", "value": "retrieve"},
    {"key": "span.kind", "type": "string", "value": "client"}
  ]},
  {"traceID": "26985779373a64532c021e6771a16994", "spanID": "995071c9583f97ab", "operationName": "stage answer", "startTime": 1796190231039174, "duration": 37707, "processID": "p2",
   "references": [{"refType": "CHILD_OF", "traceID": "26985779373a64532c021e6771a16994", "spanID": "09e7e3ae0917367b"}],
   "logs": [], "warnings": null, "tags": [
    {"key": "k8s.namespace.name", "type": "string", "value": "search"},
    {"key": "penstock.pipeline", "type": "string", "value": "qa"},
    {"key": "penstock.stage", "type": "string", "value": "answer"},
    {"key": "span.kind", "type": "string", "value": "client"}
  ]},
  {"traceID": "26985779373a64532c021e6771a16994", "spanID": "09e7e3ae0917367b", "operationName": "pipeline qa", "startTime": 1796190231015322, "duration": 61700, "processID": "p2",
   "references": [],
   "logs": [], "warnings": null, "tags": [
    {"key": "k8s.namespace.name", "type": "string", "value": "search"},
    {"key": "penstock.pipeline", "type": "string", "value": "qa"},
    {"key": "span.kind", "type": "string", "value": "server"}
  ]},
  {"traceID": "26985779373a64532c021e6771a16994", "spanID": "028b03813ec525bf", "operationName": "POST retrieve", "startTime": 1796190231016191, "duration": 22258, "processID": "p3",
   "references": [{"refType": "CHILD_OF", "traceID": "26985779373a64532c021e6771a16994", "spanID": "40b10df3ed4ab0ea"}],
   "logs": [], "warnings": null, "tags": [
    {"key": "http.response.status_code", "type": "int64", "value": 200},
    {"key": "k8s.namespace.name", "type": "string", "value": "search"},
    {"key": "penstock.cache.hit", "type": "bool", "value": false},
    {"key": "penstock.cost.usd", "type": "float64", "value": 2.1556765000013913e-05},
    {"key": "penstock.pipeline", "type": "string", "value": "qa"},
    {"key": "penstock.stage", "type": "string", "value": "retrieve"},
    {"key": "span.kind", "type": "string", "value": "server"}
  ]}
 ],
 "processes": {
  "p1": {"serviceName": "qa.answer", "tags": [
   {"key": "k8s.namespace.name", "type": "string", "value": "search"},
   {"key": "penstock.pipeline", "type": "string", "value": "qa"},
   {"key": "penstock.stage", "type": "string", "value": "answer"},
   {"key": "service.namespace", "type": "string", "value": "search"}
  ]},
  "p2": {"serviceName": "qa.router", "tags": [
   {"key": "k8s.namespace.name", "type": "string", "value": "search"},
   {"key": "penstock.pipeline", "type": "string", "value": "qa"},
   {"key": "service.namespace", "type": "string", "value": "search"}
  ]},
  "p3": {"serviceName": "qa.retrieve", "tags": [
   {"key": "k8s.namespace.name", "type": "string", "value": "search"},
   {"key": "penstock.pipeline", "type": "string", "value": "qa"},
   {"key": "penstock.stage", "type": "string", "value": "retrieve"},
   {"key": "service.namespace", "type": "string", "value": "search"}
  ]}
 },
 "warnings": null
}

"""
)
ROOT, RETRIEVE, ANSWER = "09e7e3ae0917367b", "40b10df3ed4ab0ea", "995071c9583f97ab"
GATEWAY = {"retrieve": "028b03813ec525bf", "answer": "cf75aebba82027e3"}
COSTS = {"retrieve": 2.1556765000013913e-05, "answer": 6.732975800014174e-05}


def document(*found: dict[str, Any]) -> dict[str, Any]:
    """An /api/traces answer as Jaeger frames it."""
    return {"data": list(found), "total": 0, "limit": 0, "offset": 0, "errors": None}


def captured() -> dict[str, Any]:
    return copy.deepcopy(CAPTURED)


def span(trace: dict[str, Any], span_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in trace["spans"] if s["spanID"] == span_id)
    return found


def set_tag(node: dict[str, Any], key: str, value: Any) -> None:
    node["tags"] = [tag for tag in node["tags"] if tag["key"] != key]
    node["tags"].append({"key": key, "type": "string", "value": value})


def router_process(trace: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        p for p in trace["processes"].values() if p["serviceName"].endswith(".router")
    )
    return found


def shifted(trace: dict[str, Any], micros: int, suffix: str) -> dict[str, Any]:
    """The same request ``micros`` later, with span ids of its own."""
    moved = copy.deepcopy(trace)
    for item in moved["spans"]:
        item["startTime"] += micros
        item["spanID"] += suffix
        for reference in item["references"]:
            reference["spanID"] += suffix
    return moved


def spec_of(stages: list[dict[str, Any]]) -> PipelineSpec:
    doc = {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "qa", "namespace": "search"},
        "spec": {"output": "answer", "stages": stages},
    }
    spec = validate_document(doc).spec
    assert spec is not None
    return spec


CHAIN: list[dict[str, Any]] = [
    {"name": "retrieve", "image": "r:1", "cache": {"enabled": True}},
    {"name": "answer", "image": "a:1", "dependsOn": ["retrieve"]},
]


# ----------------------------------------------------------------- conversion


def test_the_captured_trace_is_the_routers_profile() -> None:
    (profile,) = profiles_from_jaeger(document(captured()), "search", "qa")
    # Times from the router's client spans, relative to its server span (start 1796190231015322).
    assert profile.stages == {
        "retrieve": StageTiming("retrieve", 0.178, pytest.approx(23.573), None),  # type: ignore[arg-type]
        "answer": StageTiming("answer", 23.852, pytest.approx(61.559), None),  # type: ignore[arg-type]
    }
    assert list(profile.stages) == ["retrieve", "answer"]  # in start order
    assert profile.total_ms == 61.7
    # Inferred without the Pipeline: answer started after retrieve ended.
    assert profile.critical_path == ("retrieve", "answer")
    assert isinstance(profile, TracedProfile)
    assert profile.costs == COSTS
    assert profile.request is None


def test_the_pipeline_gives_cache_states_and_the_critical_path() -> None:
    (profile,) = profiles_from_jaeger(document(captured()), "search", "qa", spec=spec_of(CHAIN))
    # retrieve caches: its false is a miss; answer has no cache: no state.
    assert (profile.stages["retrieve"].cache, profile.stages["answer"].cache) == ("miss", None)
    assert profile.critical_path == ("retrieve", "answer")
    # Independent stages by the Pipeline: the output alone is the critical path.
    parallel = spec_of([{"name": "retrieve", "image": "r:1"}, {"name": "answer", "image": "a:1"}])
    (profile,) = profiles_from_jaeger(document(captured()), "search", "qa", spec=parallel)
    assert profile.critical_path == ("answer",)


def test_without_the_pipeline_a_stage_that_hit_once_counts_its_misses() -> None:
    hit = shifted(captured(), 100_000, "1")
    set_tag(span(hit, GATEWAY["retrieve"] + "1"), "penstock.cache.hit", True)
    span(hit, GATEWAY["retrieve"] + "1")["tags"][-1]["type"] = "bool"
    profiles = profiles_from_jaeger(document(hit, captured()), "search", "qa")
    assert [p.stages["retrieve"].cache for p in profiles] == ["miss", "hit"]  # oldest first
    assert [p.stages["answer"].cache for p in profiles] == [None, None]
    report = analyze(profiles)
    assert report.stages["retrieve"].hit_ratio == 0.5
    assert report.stages["answer"].hit_ratio is None


def test_other_pipelines_namespaces_and_failed_requests_are_left_out() -> None:
    elsewhere = captured()
    for process in elsewhere["processes"].values():
        set_tag(process, "service.namespace", "staging")
        set_tag(process, "k8s.namespace.name", "staging")
    chat = captured()
    router_process(chat)["serviceName"] = "chat.router"
    set_tag(router_process(chat), "penstock.pipeline", "chat")
    span(chat, ROOT)["operationName"] = "pipeline chat"
    failed = shifted(captured(), 5_000, "f")
    root = span(failed, ROOT + "f")
    root["tags"].append({"key": "error", "type": "bool", "value": True})
    status = shifted(captured(), 6_000, "s")
    set_tag(span(status, ROOT + "s"), "otel.status_code", "ERROR")
    # Only the router's own server span is a request: not a gateway's, not a client span.
    gateway_only = captured()
    gateway_only["spans"] = [s for s in gateway_only["spans"] if s["processID"] != "p2"]
    result = convert(
        document(elsewhere, chat, failed, captured(), status, gateway_only), "search", "qa"
    )
    assert len(result.profiles) == 1
    assert (result.traces, result.failed, result.foreign) == (6, 2, 3)
    assert profiles_from_jaeger(document(chat), "search", "chat")[0].stages.keys() == {
        "retrieve",
        "answer",
    }
    assert convert(document(elsewhere), "staging", "qa").profiles[0].total_ms == 61.7


def test_the_namespace_may_come_from_k8s_namespace_name_only() -> None:
    trace = captured()
    process = router_process(trace)
    process["tags"] = [t for t in process["tags"] if t["key"] != "service.namespace"]
    assert len(profiles_from_jaeger(document(trace), "search", "qa")) == 1
    process["tags"] = [t for t in process["tags"] if t["key"] != "k8s.namespace.name"]
    span(trace, ROOT)["tags"] = [
        t for t in span(trace, ROOT)["tags"] if t["key"] != "k8s.namespace.name"
    ]
    assert profiles_from_jaeger(document(trace), "search", "qa") == []


def test_two_requests_in_one_callers_trace_are_two_profiles() -> None:
    trace = captured()
    later = shifted(captured(), 200_000, "2")
    trace["spans"] += later["spans"]
    for root in (span(trace, ROOT), span(trace, ROOT + "2")):
        root["references"] = [
            {"refType": "CHILD_OF", "traceID": trace["traceID"], "spanID": "caller"}
        ]
    profiles = profiles_from_jaeger(document(trace), "search", "qa")
    assert len(profiles) == 2
    assert profiles[0].stages == profiles[1].stages


def test_a_request_without_stage_spans_yet_is_left_out() -> None:
    trace = captured()
    trace["spans"] = [span(trace, ROOT)]
    result = convert(document(trace), "search", "qa")
    assert (result.profiles, result.incomplete) == ([], 1)


def test_nothing_found_is_no_profiles() -> None:
    empty = {"data": None, "total": 0, "limit": 0, "offset": 0, "errors": None}
    assert profiles_from_jaeger(empty, "search", "qa") == []
    assert profiles_from_jaeger(document(), "search", "qa") == []


def test_costs_go_into_the_report() -> None:
    profiles = profiles_from_jaeger(document(captured()), "search", "qa")
    report = analyze(profiles)
    traces.add_costs(report, profiles)
    assert report.cost_per_request_usd == pytest.approx(sum(COSTS.values()))
    assert report.stages["answer"].cost_usd == pytest.approx(COSTS["answer"])
    assert "cost: $0.000089 per request (retrieve $0.000022, answer $0.000067)" in render(report)
    figures = as_json(report)
    assert figures["stages"]["retrieve"]["cost_usd"] == pytest.approx(COSTS["retrieve"])
    # Profiles from a router (not traces) have no cost: the report says nothing of it.
    plain = analyze([StageProfile()])
    traces.add_costs(plain, [StageProfile()])
    assert plain.cost_per_request_usd is None
    assert "cost:" not in render(plain)


def test_savings_and_tokens_go_into_the_report() -> None:
    base = captured()
    set_tag(span(base, GATEWAY["answer"]), "gen_ai.usage.input_tokens", 300)
    set_tag(span(base, GATEWAY["answer"]), "gen_ai.usage.output_tokens", 100)
    set_tag(span(base, GATEWAY["retrieve"]), "penstock.saved.usd", "odd")  # no reason: ignored
    hit, miss = copy.deepcopy(base), shifted(base, 100_000, "b")
    set_tag(span(hit, GATEWAY["retrieve"]), "penstock.saved.reason", "cache")
    set_tag(span(hit, GATEWAY["retrieve"]), "penstock.saved.usd", 0.0002)
    profiles = profiles_from_jaeger(document(hit, miss), "search", "qa")
    report = analyze(profiles)
    traces.add_costs(report, profiles)
    assert report.saved_per_request_usd == {"cache": pytest.approx(0.0001)}
    assert report.stages["retrieve"].saved_usd == pytest.approx(0.0001)
    answer = report.stages["answer"]
    assert answer.tokens_per_request == 400
    assert answer.cost_per_million_tokens_usd == pytest.approx(COSTS["answer"] / 400 * 1e6)
    text = render(report)
    assert "saved: $0.000100 per request by the gateways (cache $0.000100)" in text
    assert "tokens: answer 400 per request, $0.1683 per 1M tokens" in text
    assert as_json(report)["saved_per_request_usd"] == {"cache": pytest.approx(0.0001)}


def StageProfile() -> TracedProfile:
    timing = StageTiming("answer", 0.0, 1.0, None)
    return TracedProfile({"answer": timing}, ("answer",), 1.0)


# ----------------------------------------------------------------- malformed answers


def _mutate(change: Callable[[dict[str, Any]], Any]) -> Any:
    doc = document(captured())
    result = change(doc)
    return doc if result is None else result


MALFORMED: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda d: [], "Jaeger answer must be an object"),
    (lambda d: {"total": 0}, "Jaeger answer: no data field"),
    (lambda d: {"data": {}}, "Jaeger answer.data must be a list of traces"),
    (lambda d: {"data": None, "errors": [{"code": 500, "msg": "boom"}]}, "Jaeger answered errors"),
    (lambda d: d["data"].__setitem__(0, 3), "data[0] must be an object (got 3)"),
    (
        lambda d: d["data"][0].__delitem__("processes"),
        "data[0].processes must be an object (got None)",
    ),
    (lambda d: d["data"][0].__setitem__("spans", {}), "data[0].spans must be a list"),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("startTime", "x"),
        "data[0].spans[1].startTime must be a whole number (got 'x')",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("startTime", True),
        "data[0].spans[1].startTime must be a whole number (got True)",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("duration", 1.5),
        "data[0].spans[1].duration must be a whole number",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("duration", -5),
        "data[0].spans[1]: startTime and duration must not be negative",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__delitem__("spanID"),
        "data[0].spans[1].spanID must be a string",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("processID", "p9"),
        "data[0].spans[1].processID 'p9' is not in",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("tags", {}),
        "data[0].spans[1].tags must be a list",
    ),
    (
        lambda d: d["data"][0]["spans"][1]["tags"].__setitem__(0, {"value": 1}),
        "data[0].spans[1].tags[0].key must be a string",
    ),
    (
        lambda d: d["data"][0]["spans"][1]["tags"].__setitem__(0, "k=v"),
        "data[0].spans[1].tags[0] must be an object",
    ),
    (
        lambda d: d["data"][0]["spans"][1].__setitem__("references", "up"),
        "data[0].spans[1].references must be a list",
    ),
    (
        lambda d: d["data"][0]["spans"][1]["references"][0].__delitem__("spanID"),
        "data[0].spans[1].references[0].spanID must be a string",
    ),
    (
        lambda d: d["data"][0]["processes"]["p2"].__setitem__("serviceName", None),
        "data[0].processes['p2'].serviceName must be a string",
    ),
    (
        lambda d: d["data"][0]["processes"].__setitem__("p2", []),
        "data[0].processes['p2'] must be an object",
    ),
    (
        lambda d: set_tag(span(d["data"][0], GATEWAY["answer"]), "penstock.cost.usd", "cheap"),
        f"data[0] span {GATEWAY['answer']}: penstock.cost.usd must be a number of USD",
    ),
    (
        lambda d: set_tag(span(d["data"][0], GATEWAY["answer"]), "penstock.cost.usd", -1),
        "penstock.cost.usd must be a number of USD, 0 or more (got -1)",
    ),
    (
        lambda d: set_tag(span(d["data"][0], GATEWAY["retrieve"]), "penstock.cache.hit", "yes"),
        f"data[0] span {GATEWAY['retrieve']}: penstock.cache.hit must be true or false (got 'yes')",
    ),
    (
        lambda d: set_tag(span(d["data"][0], RETRIEVE), "penstock.stage", 7),
        f"data[0] span {RETRIEVE}: penstock.stage must be a stage name (got 7)",
    ),
]


@pytest.mark.parametrize(("change", "needle"), MALFORMED)
def test_a_malformed_answer_names_the_field(
    change: Callable[[dict[str, Any]], Any], needle: str
) -> None:
    with pytest.raises(AnalyzeError) as caught:
        profiles_from_jaeger(_mutate(change), "search", "qa")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("Jaeger answer")


JAEGERISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "errors",
                    "spans",
                    "processes",
                    "p2",
                    "serviceName",
                    "tags",
                    "key",
                    "value",
                    "spanID",
                    "operationName",
                    "startTime",
                    "duration",
                    "processID",
                    "references",
                    "refType",
                ]
            ),
            c,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JAEGERISH)
def test_any_json_is_profiles_or_an_analyze_error(doc: Any) -> None:
    message = ""
    try:
        profiles_from_jaeger(doc, "search", "qa")
    except AnalyzeError as error:  # anything else fails the test
        message = str(error)
    assert len(message) <= MAX_MESSAGE


# ----------------------------------------------------------------- options


def test_parse_since() -> None:
    assert [parse_since(t) for t in ("1h", "30m", "1h30m", "90s", "2d", "1.5h")] == [
        3600,
        1800,
        5400,
        90,
        172800,
        5400,
    ]


URL = "http://127.0.0.1:9/"
REF = ["--pipeline-ref", "search/qa"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--jaeger", URL], "--jaeger needs --pipeline-ref NAMESPACE/NAME"),
        (["p.jsonl", *REF], "--pipeline-ref: only with --jaeger URL"),
        (["p.jsonl", "--since", "1h", "--limit", "5"], "--since, --limit: only with --jaeger URL"),
        (["p.jsonl", "--jaeger", URL, *REF], "--jaeger URL does not go with FILE"),
        (
            ["--url", URL, "--body", "b.json", "--jaeger", URL, *REF],
            "does not go with --url, --body",
        ),
        (["--jaeger", URL, *REF, "--wait", "5"], "does not go with --wait"),
        (["--jaeger", URL, *REF, "--since", "1h", "--until", "2h"], "--until 2h must be less"),
        (["--jaeger", URL, *REF, "--until", "1x"], "--until must be a duration"),
        (["p.jsonl", "--until", "1h"], "--until: only with --jaeger URL"),
        (["--jaeger", URL, *REF, "--compare", "a", "b"], "does not go with --compare"),
        *[
            (["--jaeger", URL, "--pipeline-ref", ref], "--pipeline-ref must be NAMESPACE/NAME")
            for ref in (
                "qa",
                "Search/qa",
                "search/qa/x",
                "/qa",
                "search/",
                "s_p/qa",
                "a" * 64 + "/qa",
            )
        ],
        *[
            (["--jaeger", URL, *REF, f"--since={since}"], "--since must be a duration")
            for since in ("1x", "0h", "400d", "h", "1h 30m", "-1h", "", "1", "1hh")
        ],
        *[
            (["--jaeger", URL, *REF, "--limit", limit], "--limit must be 1 to 10000")
            for limit in ("0", "10001", "-3")
        ],
        *[
            (["--jaeger", url, *REF], "--jaeger must be the http(s) URL of Jaeger's query service")
            for url in ("ftp://jaeger", "jaeger:16686", "http:///x", "http://j:16686/?service=x")
        ],
    ],
)
def test_option_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("penstock analyze: error: ") and err.count("\n") == 1, err
    assert needle in err


# ----------------------------------------------------------------- a Jaeger on 127.0.0.1


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


def reply(status: int, body: Any, kind: str = "application/json", delay: float = 0.0) -> Route:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        try:
            request.send_response(status)
            request.send_header("Content-Type", kind)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except ConnectionError:  # the client gave up (the slow Jaeger's --timeout)
            pass

    return handle


SERVICES = reply(200, {"data": ["qa.answer", "qa.retrieve", "qa.router"], "errors": None})


class Jaeger:
    """A fake query API: routes by path; remembers the queries it was asked."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.queries: list[tuple[str, dict[str, list[str]]]] = []
        jaeger = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                jaeger.queries.append((parts.path, parse_qs(parts.query)))
                routes.get(parts.path, reply(404, b"404 page not found", "text/plain"))(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # joins the handler threads: none outlives its test


@pytest.fixture
def jaegers() -> Iterator[Callable[[dict[str, Route]], Jaeger]]:
    started: list[Jaeger] = []

    def start(routes: dict[str, Route]) -> Jaeger:
        started.append(Jaeger(routes))
        return started[-1]

    yield start
    for jaeger in started:
        jaeger.close()


def test_analyze_reads_jaeger(
    jaegers: Callable[[dict[str, Route]], Jaeger], capsys: pytest.CaptureFixture[str]
) -> None:
    found = document(captured(), shifted(captured(), 100_000, "b"))
    jaeger = jaegers({"/api/services": SERVICES, "/api/traces": reply(200, found)})
    before = time.time()
    assert main(["--jaeger", jaeger.url, "--pipeline-ref", "search/qa", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "read 2 requests of search/qa from 2 traces of the last 1h" in err
    figures = json.loads(out)
    assert figures["requests"] == 2
    assert figures["critical_path"] == ["retrieve", "answer"]
    assert figures["stages"]["answer"]["p50_ms"] == pytest.approx(37.707)
    assert figures["cost_per_request_usd"] == pytest.approx(sum(COSTS.values()))
    (path, query) = jaeger.queries[-1]
    assert path == "/api/traces"
    assert (query["service"], query["limit"]) == (["qa.router"], ["500"])
    start, end = int(query["start"][0]), int(query["end"][0])
    assert end - start == pytest.approx(3600e6, abs=1)  # microseconds
    assert before * 1e6 - 1e6 <= end <= time.time() * 1e6
    # A base path (Jaeger behind --query.base-path) and the options.
    assert main(["--jaeger", jaeger.url + "/", *REF, "--since", "90m", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert "--limit 2 reached: a sample" in err
    assert "2 requests: end to end mean" in out
    (_, query) = jaeger.queries[-1]
    assert query["limit"] == ["2"]
    assert int(query["end"][0]) - int(query["start"][0]) == pytest.approx(5400e6, abs=1)


def test_two_windows_of_traces_saved_then_compared(
    jaegers: Callable[[dict[str, Route]], Jaeger],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    found = document(captured(), shifted(captured(), 100_000, "b"))
    jaeger = jaegers({"/api/services": SERVICES, "/api/traces": reply(200, found)})
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    args = ["--jaeger", jaeger.url, *REF]
    assert main([*args, "--since", "2h", "--until", "1h", "--save", str(before)]) == 0
    (_, query) = jaeger.queries[-1]
    start, end = int(query["start"][0]), int(query["end"][0])
    assert end - start == pytest.approx(3600e6, abs=1)
    assert time.time() * 1e6 - end == pytest.approx(3600e6, abs=5e6)  # ends an hour ago
    assert "of the last 2h up to 1h ago" in capsys.readouterr().err
    assert main([*args, "--since", "1h", "--save", str(after)]) == 0
    capsys.readouterr()
    assert len(before.read_text().splitlines()) == 2
    assert main(["--compare", str(before), str(after), "--bootstrap", "100"]) == 0
    assert "end to end p50" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        (
            {"/api/services": reply(200, {"data": ["chat.router"]})},
            "/api/services: Jaeger has no traces of qa.router (the router of search/qa;",
        ),
        ({"/api/services": reply(200, {"data": None})}, "services: none"),
        (
            {"/api/services": reply(200, {"data": "qa.router"})},
            "data must be a list of service names",
        ),
        (
            {"/api/services": reply(200, b"<html>Grafana</html>", "text/html")},
            "/api/services answered something that is not JSON (is it Jaeger's query port?)",
        ),
        ({}, "/api/services answered HTTP 404: 404 page not found"),
        (
            {
                "/api/services": SERVICES,
                "/api/traces": reply(400, {"data": None, "errors": [{"code": 400, "msg": "bad"}]}),
            },
            "answered HTTP 400",
        ),
        (
            {
                "/api/services": SERVICES,
                "/api/traces": reply(200, document(captured() | {"spans": 5})),
            },
            "/api/traces?service=qa.router&start=",
        ),
        (
            {"/api/services": SERVICES, "/api/traces": reply(200, document())},
            "no requests of search/qa in the answer (0 traces: 0 failed requests, 0 without stage spans, 0 of other",
        ),
    ],
)
def test_jaeger_answers_that_cannot_be_used(
    jaegers: Callable[[dict[str, Route]], Jaeger],
    capsys: pytest.CaptureFixture[str],
    routes: dict[str, Route],
    needle: str,
) -> None:
    jaeger = jaegers(routes)
    assert main(["--jaeger", jaeger.url, *REF]) == 1
    err = capsys.readouterr().err
    assert err.startswith("penstock analyze: error: ") and err.count("\n") == 1, err
    assert len(err) <= MAX_MESSAGE + 100
    assert needle in err


def test_a_closed_port_a_slow_jaeger_and_a_huge_answer(
    jaegers: Callable[[dict[str, Route]], Jaeger],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["--jaeger", closed, *REF]) == 1
    assert f"cannot reach {closed}/api/services" in capsys.readouterr().err
    slow = jaegers({"/api/services": reply(200, {"data": []}, delay=2.0)})
    started = time.monotonic()
    assert main(["--jaeger", slow.url, *REF, "--timeout", "0.3"]) == 1
    assert time.monotonic() - started < 1.8
    assert "timed out" in capsys.readouterr().err
    monkeypatch.setattr(traces, "MAX_ANSWER_BYTES", 100)
    big = jaegers({"/api/services": reply(200, {"data": ["x" * 200]})})
    assert main(["--jaeger", big.url, *REF]) == 1
    assert "answered more than 100 bytes (lower --limit or --since)" in capsys.readouterr().err
