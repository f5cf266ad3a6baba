"""The Prometheus API client against a real local HTTP server serving canned /api/v1/query answers."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from penstock.api.status import PipelineStatus, StageStatus, VariantStatus
from penstock.controller.prometheus import (
    Efficiency,
    PrometheusClient,
    PrometheusError,
    Saved,
    VariantFigures,
    escape_label_value,
    inflight_query,
    latency_query,
    observe_efficiency,
    observe_pipeline,
    observe_savings,
    request_rate_query,
    savings_query,
    variant_queries,
)
from penstock.controller.tuner import Observation
from penstock.controller.tuning import add_efficiency, add_savings

# (status code, body) for a query string
Answer = Callable[[str], tuple[int, bytes]]


class Server:
    def __init__(self) -> None:
        self.answer: Answer = lambda _query: (200, vector([]))
        self.queries: list[str] = []
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                server.paths.append(parsed.path)
                query = urllib.parse.parse_qs(parsed.query).get("query", [""])[0]
                server.queries.append(query)
                code, body = server.answer(query)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    instance = Server()
    yield instance
    instance.close()


def vector(series: list[tuple[dict[str, str], str]]) -> bytes:
    return json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": m, "value": [1700000000.5, v]} for m, v in series],
            },
        }
    ).encode()


def test_instant_vector_is_parsed(server: Server) -> None:
    server.answer = lambda _q: (200, vector([({"stage": "a"}, "1.5"), ({"stage": "b"}, "NaN")]))
    samples = PrometheusClient(server.url + "/").query("up")
    assert [(s.labels, s.value) for s in samples[:1]] == [({"stage": "a"}, 1.5)]
    assert math.isnan(samples[1].value)
    assert server.paths == ["/api/v1/query"]
    assert server.queries == ["up"]


def test_scalar_result(server: Server) -> None:
    body = json.dumps(
        {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}
    ).encode()
    server.answer = lambda _q: (200, body)
    assert PrometheusClient(server.url).query("3")[0].value == 3.0


@pytest.mark.parametrize(
    ("code", "body", "message"),
    [
        (
            400,
            b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}',
            "HTTP 400 to 'x': bad_data: parse error at char 3",
        ),
        (503, b"service unavailable", "HTTP 503 to 'x': service unavailable"),
        (200, b"<html>not json</html>", "is not JSON"),
        (200, b"[1, 2]", "is not a JSON object"),
        (
            200,
            b'{"status":"error","errorType":"timeout","error":"query timed out"}',
            "failed: timeout: query timed out",
        ),
        (200, b'{"status":"success"}', "has no data object"),
        (
            200,
            b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
            "is a 'matrix', not an instant vector",
        ),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}',
            "malformed sample value",
        ),
        (
            200,
            b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}',
            "'x' in the answer to 'x' is not a number",
        ),
        (200, b'{"status":"success","data":{"resultType":"vector","result":[7]}}', "malformed"),
    ],
)
def test_errors_are_prometheus_errors(server: Server, code: int, body: bytes, message: str) -> None:
    server.answer = lambda _q: (code, body)
    with pytest.raises(PrometheusError) as error:
        PrometheusClient(server.url).query("x")
    assert message in str(error.value)


def test_connection_refused_is_a_prometheus_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        PrometheusError, match=re.escape("cannot reach Prometheus at http://127.0.0.1")
    ):
        PrometheusClient(f"http://127.0.0.1:{port}", timeout_seconds=2).query("up")


def test_timeout_is_a_prometheus_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never answers
        client = PrometheusClient(
            f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_seconds=0.3
        )
        with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
            client.query("up")


def test_bad_url_is_rejected() -> None:
    with pytest.raises(PrometheusError, match="not an http"):
        PrometheusClient("prometheus:9090")


def test_label_values_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    query = request_rate_query("ns", 'p"} or vector(1) #')
    assert query == (
        "sum by (stage) (rate(penstock_stage_requests_total"
        '{namespace="ns",pipeline="p\\"} or vector(1) #"}[2m]))'
    )


def test_queries_follow_the_gateway_metrics() -> None:
    selector = '{namespace="search",pipeline="rag"}'
    assert latency_query("search", "rag") == (
        f"sum by (stage) (rate(penstock_stage_request_duration_seconds_sum{selector}[2m]))"
        f" / sum by (stage) (rate(penstock_stage_request_duration_seconds_count{selector}[2m]))"
    )
    assert inflight_query("search", "rag", "5m") == (
        f"sum by (stage) (avg_over_time(penstock_stage_inflight_requests{selector}[5m]))"
    )


def test_observe_pipeline_builds_the_tuner_input(server: Server) -> None:
    def answer(query: str) -> tuple[int, bytes]:
        if "requests_total" in query:
            return 200, vector([({"stage": "retrieve"}, "12.5"), ({"stage": "generate"}, "0")])
        if "duration_seconds" in query:
            # 0/0 without traffic is NaN: missing, not zero.
            return 200, vector([({"stage": "retrieve"}, "0.08"), ({"stage": "generate"}, "NaN")])
        return 200, vector([({"stage": "retrieve"}, "1.25"), ({}, "9")])

    server.answer = answer
    observed = observe_pipeline(
        PrometheusClient(server.url),
        "search",
        "rag",
        ["retrieve", "embed", "generate"],
        {"retrieve": 2, "generate": 1},
    )
    assert observed == {
        "retrieve": Observation(12.5, 0.08, 1.25, 2),
        "embed": Observation(None, None, None, None),
        "generate": Observation(0.0, None, None, 1),
    }
    assert len(server.queries) == 3
    assert all('namespace="search",pipeline="rag"' in query for query in server.queries)


def test_observe_pipeline_raises_when_a_query_fails(server: Server) -> None:
    server.answer = lambda q: (
        (200, vector([])) if "requests_total" in q else (500, b'{"status":"error","error":"boom"}')
    )
    with pytest.raises(PrometheusError, match="HTTP 500"):
        observe_pipeline(PrometheusClient(server.url), "ns", "p", ["a"])


def test_savings_become_per_hour_status_figures(server: Server) -> None:
    def answer(query: str) -> tuple[int, bytes]:
        if "saved_seconds" in query:
            return 200, vector(
                [
                    ({"stage": "embed", "reason": "cache"}, "360"),
                    ({"stage": "embed", "reason": "batching"}, "36"),
                    ({"stage": "gone", "reason": "cache"}, "1"),
                    ({"stage": "answer", "reason": "coalesced"}, "NaN"),
                ]
            )
        return 200, vector(
            [
                ({"stage": "embed", "reason": "cache"}, "0.36"),
                ({"stage": "embed", "reason": "batching"}, "0.036"),
                ({"stage": "gone", "reason": "cache"}, "0.001"),
            ]
        )

    server.answer = answer
    saved = observe_savings(PrometheusClient(server.url), "search", "rag", "15m")
    assert Saved("embed", "cache", 360.0, 0.36) in saved
    assert Saved("answer", "coalesced", 0.0, 0.0) in saved  # NaN: nothing, not a number
    assert server.queries == [
        savings_query("penstock_stage_saved_seconds_total", "search", "rag", "15m"),
        savings_query("penstock_stage_saved_usd_total", "search", "rag", "15m"),
    ]
    assert server.queries[0] == (
        "3600 * sum by (stage, reason) (rate(penstock_stage_saved_seconds_total"
        '{namespace="search",pipeline="rag"}[15m]))'
    )
    status = PipelineStatus(stages=[StageStatus(name="embed"), StageStatus(name="answer")])
    add_savings(status, saved)
    assert status.savings is not None
    assert status.savings.usd_per_hour == "0.3960"  # the removed stage "gone" is left out
    assert status.savings.stage_seconds_per_hour == 396.0
    assert [(r.reason, r.usd_per_hour) for r in status.savings.by_reason] == [
        ("cache", "0.3600"),
        ("coalesced", "0.0000"),
        ("batching", "0.0360"),
    ]
    assert status.stages[0].saved_hourly_cost == "0.3960"
    assert status.model_dump(by_alias=True, exclude_none=True)["savings"]["byReason"][0] == {
        "reason": "cache",
        "usdPerHour": "0.3600",
        "stageSecondsPerHour": 360.0,
    }


def test_no_savings_figures_means_no_savings_status() -> None:
    status = PipelineStatus(stages=[StageStatus(name="embed")])
    add_savings(status, [])
    assert status.savings is None and status.stages[0].saved_hourly_cost is None


def test_cost_per_request_and_per_million_tokens(server: Server) -> None:
    def answer(query: str) -> tuple[int, bytes]:
        if "tokens_total" in query:
            return 200, vector([({"stage": "answer"}, "2.5")])
        if "requests_total" in query:
            return 200, vector([({"stage": "answer"}, "0.0000125"), ({"stage": "embed"}, "NaN")])
        return 200, vector([])

    server.answer = answer
    efficiency = observe_efficiency(PrometheusClient(server.url), "search", "rag", "15m")
    assert len(server.queries) == 4
    assert server.queries[3].startswith("1e6 * sum by (stage) (rate(penstock_stage_cost_usd_total")
    status = PipelineStatus(stages=[StageStatus(name="answer"), StageStatus(name="embed")])
    add_efficiency(status, efficiency)
    answer_stage, embed = status.stages
    assert (answer_stage.cost_per_request, answer_stage.cost_per_million_tokens) == (
        "1.25e-05",
        "2.5",
    )
    assert (embed.cost_per_request, embed.cost_per_million_tokens) == (None, None)
    assert status.savings is None


def test_variant_queries_follow_the_router_and_gateway_metrics() -> None:
    selector = 'namespace="search",pipeline="qa"'
    calls = "penstock_router_variant_calls_total"
    by = "sum by (stage, variant)"
    assert variant_queries("search", "qa", "15m") == [
        f'{by} (rate({calls}{{{selector},outcome="served"}}[15m])) / on (stage) group_left'
        f' sum by (stage) (rate({calls}{{{selector},outcome="served"}}[15m]))',
        f'{by} (rate({calls}{{{selector},outcome!="served"}}[15m]))'
        f" / {by} (rate({calls}{{{selector}}}[15m]))",
        f"{by} (rate(penstock_stage_cost_usd_total{{{selector}}}[15m]))"
        f" / {by} (rate(penstock_stage_requests_total{{{selector}}}[15m]))",
    ]


def _variant_answer(query: str) -> tuple[int, bytes]:
    """Prometheus as it would answer for stage answer's variants light and heavy."""
    if "variant" not in query:  # the per-stage figures: not the subject here
        return 200, vector([])
    if "group_left" in query:  # served share
        series = [
            ({"stage": "answer", "variant": "light"}, "0.6251"),
            ({"stage": "answer", "variant": "heavy"}, "0.3749"),
        ]
    elif 'outcome!="served"' in query:  # escalated share; heavy never escalates (0/0 is NaN)
        series = [
            ({"stage": "answer", "variant": "light"}, "0.3333333"),
            ({"stage": "answer", "variant": "heavy"}, "NaN"),
        ]
    else:  # cost per request; a stage without variants has no variant label
        series = [
            ({"stage": "answer", "variant": "light"}, "0.0000123456"),
            ({"stage": "answer", "variant": "heavy"}, "0.0004"),
            ({"stage": "retrieve"}, "0.5"),
            ({"stage": "answer", "variant": "gone"}, "-1"),
        ]
    return 200, vector(series)


def test_variant_figures_are_queried_only_for_a_pipeline_with_variants(server: Server) -> None:
    server.answer = _variant_answer
    plain = observe_efficiency(PrometheusClient(server.url), "search", "qa", "15m")
    assert len(server.queries) == 4 and plain.variants == ()
    assert not any("variant" in query for query in server.queries)
    server.queries.clear()
    efficiency = observe_efficiency(
        PrometheusClient(server.url), "search", "qa", "15m", variants=True
    )
    assert server.queries[4:] == variant_queries("search", "qa", "15m")
    assert efficiency.variants == (
        VariantFigures("answer", "gone", None, None, None),  # a negative figure is no figure
        VariantFigures("answer", "heavy", 0.3749, None, 0.0004),
        VariantFigures("answer", "light", 0.6251, 0.3333333, 0.0000123456),
    )


def test_variant_figures_fill_the_variants_of_the_stage_status(server: Server) -> None:
    server.answer = _variant_answer
    efficiency = observe_efficiency(
        PrometheusClient(server.url), "search", "qa", "15m", variants=True
    )
    status = PipelineStatus(
        stages=[
            StageStatus(name="retrieve"),
            StageStatus(
                name="answer", variants=[VariantStatus(name="light"), VariantStatus(name="heavy")]
            ),
        ]
    )
    add_efficiency(status, efficiency)
    retrieve, answer = status.stages
    assert retrieve.variants is None
    assert answer.variants is not None
    light, heavy = answer.variants
    assert (light.served_share, light.escalated_share, light.cost_per_request) == (
        0.625,
        0.333,
        "1.23e-05",
    )
    assert (heavy.served_share, heavy.escalated_share, heavy.cost_per_request) == (
        0.375,
        None,
        "0.0004",
    )
    assert [v.name for v in answer.variants] == ["light", "heavy"]  # "gone" is not added
    dumped = status.model_dump(by_alias=True, exclude_none=True)["stages"][1]["variants"][0]
    assert dumped == {
        "name": "light",
        "desiredReplicas": 0,
        "readyReplicas": 0,
        "servedShare": 0.625,
        "escalatedShare": 0.333,
        "costPerRequest": "1.23e-05",
    }


def test_variant_figures_of_a_stage_without_variants_in_status_are_left_out() -> None:
    status = PipelineStatus(stages=[StageStatus(name="answer")])
    figures = (VariantFigures("answer", "light", 0.5, 0.5, 0.01),)
    add_efficiency(status, Efficiency(variants=figures))
    assert status.stages[0].variants is None
