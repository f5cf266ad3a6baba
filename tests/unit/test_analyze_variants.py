"""penstock analyze over profiles of a stage with variants: per-variant figures, and a cascade
recommended for (a light variant that would have served most requests) or against (a cascade
that escalates most of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from penstock.api.validation import validate_document
from penstock.dev.analyze import analyze, as_json, main, parse_profile


def pipeline_doc(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "qa"},
        "spec": {
            "output": "answer",
            "latencyBudgetMs": 1000,
            "stages": [
                {"name": "prep", "image": "p:1"},
                {
                    "name": "answer",
                    "image": "a:1",
                    "dependsOn": ["prep"],
                    "variants": [{"name": "light"}, {"name": "heavy", "image": "a-big:1"}],
                    "variantPolicy": policy,
                },
            ],
        },
    }


def record(attempts: list[tuple[str, str, float, float | None]]) -> dict[str, Any]:
    """prep takes 1 ms, then answer's attempts one after another."""
    took = sum(duration for _, _, duration, _ in attempts)
    return {
        "output": {},
        "profile": {
            "stages": [
                {"name": "prep", "start_ms": 0.0, "end_ms": 1.0, "duration_ms": 1.0},
                {
                    "name": "answer",
                    "start_ms": 1.0,
                    "end_ms": 1.0 + took,
                    "duration_ms": took,
                    "variant": attempts[-1][0],
                    "attempts": [
                        {"variant": v, "outcome": o, "duration_ms": d, "confidence": c}
                        for v, o, d, c in attempts
                    ],
                },
            ],
            "critical_path": ["prep", "answer"],
            "total_ms": 1.0 + took,
        },
    }


def run(policy: dict[str, Any], records: list[dict[str, Any]]) -> Any:
    spec = validate_document(pipeline_doc(policy)).spec
    return analyze([parse_profile(r, f"line {i}") for i, r in enumerate(records, 1)], spec)


# A weighted 1:1 split of 40 requests: light (5 ms) confident in 16 of its 20 calls.
WEIGHTED = [record([("light", "served", 5.0, 0.9 if i < 16 else 0.2)]) for i in range(20)] + [
    record([("heavy", "served", 60.0, None)]) for _ in range(20)
]


def test_per_variant_figures_lightest_first() -> None:
    report = run({"type": "weighted"}, WEIGHTED)
    variants = report.stages["answer"].variants
    assert list(variants) == ["light", "heavy"]
    light, heavy = variants["light"], variants["heavy"]
    assert (light.calls, light.served, light.confident, light.mean_ms) == (20, 20, 16, 5.0)
    assert (heavy.calls, heavy.confident, heavy.mean_ms) == (20, 20, 60.0)
    assert light.confident_share == 0.8
    assert as_json(report)["stages"]["answer"]["variants"]["light"]["confident"] == 16
    assert report.stages["prep"].variants == {}


def test_a_light_variant_that_would_serve_most_requests_gets_a_cascade() -> None:
    report = run({"type": "weighted"}, WEIGHTED)
    text = next(r for r in report.recommendations if "cascade" in r)
    # 5 + 20% x 60 = 17 ms expected vs (20 x 5 + 20 x 60) / 40 = 32.5 ms now.
    assert text.startswith("variantPolicy {type: cascade} for answer: light answered")
    assert "80% of its 20 calls" in text
    assert "heavy on ~20% of requests (now 50%)" in text
    assert "~17.0 ms mean" in text and "vs 32.5 ms now" in text


def test_the_threshold_is_the_pipeline_min_confidence() -> None:
    # At minConfidence 0.95 only the calls without a reported confidence would be kept: none.
    report = run({"type": "weighted", "minConfidence": 0.95}, WEIGHTED)
    assert report.stages["answer"].variants["light"].confident == 0
    assert not [r for r in report.recommendations if "cascade" in r]


def test_too_few_calls_recommend_nothing() -> None:
    report = run({"type": "weighted"}, WEIGHTED[:9] + WEIGHTED[-9:])
    assert not [r for r in report.recommendations if "cascade" in r]


def test_a_cascade_that_escalates_most_requests_recommends_the_heavy_variant() -> None:
    escalated = [("light", "low_confidence", 5.0, 0.1), ("heavy", "served", 60.0, None)]
    records = [record(escalated) for _ in range(14)] + [
        record([("light", "served", 5.0, 0.9)]) for _ in range(6)
    ]
    report = run({"type": "cascade"}, records)
    light = report.stages["answer"].variants["light"]
    assert (light.calls, light.served, light.low_confidence) == (20, 6, 14)
    text = next(r for r in report.recommendations if r.startswith("heavy alone for answer"))
    assert "escalated 70% of 20 calls of light (14 low confidence, 0 failed)" in text


def test_a_cascade_that_mostly_serves_light_is_left_alone() -> None:
    records = [record([("light", "served", 5.0, 0.9)]) for _ in range(18)] + [
        record([("light", "failed", 5.0, None), ("heavy", "served", 60.0, None)]) for _ in range(12)
    ]
    report = run({"type": "cascade"}, records)
    assert report.stages["answer"].variants["light"].failed == 12
    assert not [r for r in report.recommendations if "heavy alone" in r or "cascade" in r]


def test_the_text_report_lists_the_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text("".join(json.dumps(r) + "\n" for r in WEIGHTED))
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(json.dumps(pipeline_doc({"type": "weighted"})))
    assert main([str(profiles), "--pipeline", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert "variants of answer: light 20 calls, served 100% (0 low confidence, 0 failed)" in out
    assert "heavy 20 calls" in out
