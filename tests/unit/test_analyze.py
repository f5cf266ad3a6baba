"""penstock analyze over synthetic router profiles: the figures it computes and recommends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from penstock.api.validation import validate_document
from penstock.dev.analyze import (
    analyze,
    as_json,
    main,
    parse_batch_metrics,
    parse_profile,
    percentile,
    waits,
)


def pipeline_doc() -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "rag"},
        "spec": {
            "output": "generate",
            "stages": [
                {"name": "retrieve", "image": "r:1", "cache": {"enabled": True}},
                {"name": "embed", "image": "e:1", "batching": {"maxBatchSize": 8}},
                {"name": "rerank", "image": "k:1", "dependsOn": ["retrieve", "embed"]},
                {"name": "generate", "image": "g:1", "dependsOn": ["rerank"]},
                {"name": "audit", "image": "a:1", "dependsOn": ["retrieve"]},
            ],
        },
    }


def stage(name: str, start: float, end: float, cache: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "start_ms": start,
        "end_ms": end,
        "duration_ms": end - start,
        "cache": cache,
    }


def record(
    text: str, retrieve: tuple[float, float, str], embed_end: float, total: float
) -> dict[str, Any]:
    """retrieve and embed start at 0.5 ms; rerank and generate take 10 ms each after them."""
    ready = max(retrieve[1], embed_end)
    rerank_start = ready + (1.0 if retrieve[1] > embed_end else 0.5)
    first = "retrieve" if retrieve[1] > embed_end else "embed"
    return {
        "request": {"text": text},
        "output": {"answer": "..."},
        "profile": {
            "stages": [
                stage("retrieve", retrieve[0], retrieve[1], retrieve[2]),
                stage("embed", 0.5, embed_end, None),
                stage("rerank", rerank_start, rerank_start + 10),
                stage("generate", rerank_start + 10.5, rerank_start + 20.5),
            ],
            "critical_path": [first, "rerank", "generate"],
            "total_ms": total,
        },
    }


RECORDS = [
    record("a", (0.5, 10.5, "miss"), 20.5, 42.0),
    record("a", (0.5, 1.5, "hit"), 20.5, 42.0),
    record("b", (0.5, 40.5, "miss"), 10.5, 63.0),
    record("c", (0.5, 10.5, "miss"), 20.5, 44.0),
]


@pytest.fixture
def report() -> Any:
    spec = validate_document(pipeline_doc()).spec
    profiles = [parse_profile(r, f"line {i}") for i, r in enumerate(RECORDS, 1)]
    return analyze(profiles, spec, {"embed": 2.0})


def test_percentile_is_nearest_rank() -> None:
    assert percentile([40, 1, 10, 10], 0.5) == 10
    assert percentile([40, 1, 10, 10], 0.95) == 40
    assert percentile([7], 0.5) == 7
    assert percentile([], 0.5) == 0.0


def test_per_stage_times(report: Any) -> None:
    retrieve = report.stages["retrieve"]
    assert retrieve.calls == 4
    assert retrieve.mean_ms == pytest.approx(15.25)
    assert retrieve.p50_ms == pytest.approx(10)
    assert retrieve.p95_ms == pytest.approx(40)
    embed = report.stages["embed"]
    assert embed.mean_ms == pytest.approx(17.5)
    assert embed.p50_ms == pytest.approx(20)
    assert report.total_mean_ms == pytest.approx((42 + 42 + 63 + 44) / 4)
    assert report.total_p50_ms == 42
    assert report.total_p95_ms == 63


def test_critical_path_and_shares(report: Any) -> None:
    assert report.critical_path == ("embed", "rerank", "generate")
    assert report.critical_path_share == pytest.approx(0.75)
    assert report.stages["embed"].critical_share == pytest.approx(0.75)
    assert report.stages["retrieve"].critical_share == pytest.approx(0.25)
    assert report.stages["generate"].critical_share == 1


def test_waiting_time(report: Any) -> None:
    # rerank starts 0.5 ms after its last input in three requests, 1 ms in one.
    assert report.stages["rerank"].wait_mean_ms == pytest.approx(0.625)
    assert report.stages["rerank"].wait_p95_ms == pytest.approx(1.0)
    assert report.stages["generate"].wait_mean_ms == pytest.approx(0.5)
    # Stages without dependencies wait from the request's start.
    assert report.stages["retrieve"].wait_mean_ms == pytest.approx(0.5)


def test_waiting_time_inferred_without_the_pipeline() -> None:
    profile = parse_profile(RECORDS[2], "x")
    inferred = waits(profile, None)
    exact = waits(profile, {"rerank": ["retrieve", "embed"], "retrieve": [], "embed": []})
    assert inferred["rerank"] == exact["rerank"] == pytest.approx(1.0)


def test_redundant_calls_cache_and_batch_fill(report: Any) -> None:
    assert report.repeated_requests == 1
    assert report.repeat_ratio == pytest.approx(0.25)
    retrieve = report.stages["retrieve"]
    assert retrieve.hit_ratio == pytest.approx(0.25)
    assert retrieve.hit_p50_ms == pytest.approx(1)
    assert retrieve.miss_p50_ms == pytest.approx(10)
    assert report.stages["embed"].hit_ratio is None
    assert report.stages["embed"].batch_fill == pytest.approx(0.25)
    assert report.unused_stages == ["audit"]


def test_recommendations_name_stage_and_saving(report: Any) -> None:
    text = "\n".join(report.recommendations)
    # embed: mean 17.5 ms on the critical path in 75% of requests; halving saves 6.6 ms.
    assert report.recommendations[0].startswith("scale embed: it is on the critical path in 75%")
    assert "~6.6 ms per request" in report.recommendations[0]
    assert "remove stage audit: not on any path to the output" in text
    # rerank is not cached; 25% of requests repeat: 0.25 * 10 ms.
    assert "cache rerank: 25% of requests repeat an earlier input" in text
    assert "~2.5 ms per request" in text
    assert "cache retrieve works: hit ratio 25%" in text
    assert "9.0 ms saved per hit" in text
    assert "batch fill of embed is 25%" in text
    assert not any(line.startswith("cache retrieve:") for line in report.recommendations)


def test_no_request_bodies_means_unknown_redundancy() -> None:
    profiles = [parse_profile(r["profile"], "x") for r in RECORDS]
    result = analyze(profiles)
    assert result.repeated_requests is None
    assert result.unused_stages == []
    # Without the Pipeline the batch state is unknown: batching is suggested too.
    assert any(r.startswith("batch or scale embed") for r in result.recommendations)


def test_parse_batch_metrics() -> None:
    text = (
        "# HELP penstock_stage_batch_size Requests per batch\n"
        "# TYPE penstock_stage_batch_size histogram\n"
        'penstock_stage_batch_size_bucket{stage="embed",le="+Inf"} 4.0\n'
        'penstock_stage_batch_size_count{stage="embed"} 4.0\n'
        'penstock_stage_batch_size_sum{stage="embed"} 10.0\n'
    )
    assert parse_batch_metrics(text) == {"embed": 2.5}


def test_main_prints_report_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(json.dumps(pipeline_doc()))
    assert main([str(profiles), "--pipeline", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert "critical path: embed -> rerank -> generate (75% of requests)" in out
    assert "redundant calls: 1 of 4 requests" in out
    assert "remove stage audit" in out
    assert main([str(profiles), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["stages"]["retrieve"]["cache_hit_ratio"] == 0.25
    assert figures == as_json(analyze([parse_profile(r, "x") for r in RECORDS]))


def test_bad_input_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + '\n{"answer": "streamed"}\n')
    assert main([str(path)]) == 1
    assert f"{path}:2: no profile" in capsys.readouterr().err
    path.write_text("not json\n")
    assert main([str(path)]) == 1
    assert f"{path}:1: not JSON" in capsys.readouterr().err
    assert main([]) == 2  # a usage error
    assert "give either FILE or --url" in capsys.readouterr().err
