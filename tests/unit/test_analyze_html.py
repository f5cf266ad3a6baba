"""penstock analyze --html: a self-contained page with the typical request's waterfall, stage
latency, costs and recommendations; stage names (from files) escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from penstock.api.validation import validate_document
from penstock.dev.analyze import analyze, build_parser, main, parse_profile
from penstock.dev.costs import replica_rates, stage_costs
from penstock.dev.html import CRITICAL_COLOUR, OTHER_COLOUR, render_html, typical
from tests.unit.test_analyze import RECORDS, pipeline_doc, stage


def profile_record(total: float, path: list[str], *stages: dict[str, Any]) -> dict[str, Any]:
    return {"profile": {"stages": list(stages), "critical_path": path, "total_ms": total}}


def bars(page: str) -> list[dict[str, str]]:
    """The waterfall's bars: each <rect class="bar ..."> as its attributes."""
    found = re.findall(r'<rect (class="bar[^"]*"[^>]*)>', page)
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', attrs)) for attrs in found]


@pytest.fixture
def spec() -> Any:
    return validate_document(pipeline_doc()).spec


@pytest.fixture
def profiles() -> list[Any]:
    return [parse_profile(r, f"line {i}") for i, r in enumerate(RECORDS, 1)]


def test_typical_request_has_the_common_path_and_the_median_total() -> None:
    a, b = ["a", "b"], ["b"]
    records = [
        profile_record(100, a, stage("a", 0, 50), stage("b", 50, 100)),
        profile_record(10, b, stage("b", 0, 10)),
        profile_record(30, a, stage("a", 0, 10), stage("b", 10, 30)),
        profile_record(42, a, stage("a", 0, 20), stage("b", 20, 42)),
        profile_record(41, b, stage("b", 0, 41)),
    ]
    profiles = [parse_profile(r, "x") for r in records]
    # Path a,b is the most common (3 of 5); the median of its totals (100, 30, 42) is 42.
    assert typical(profiles) is profiles[3]
    assert typical([]) is None


def test_page_is_self_contained(profiles: list[Any], spec: Any) -> None:
    page = render_html(analyze(profiles, spec), profiles, spec, replica_rates(spec))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"https?://", page)  # not even an SVG namespace: nothing to load
    assert "<link" not in page.lower()
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert "<svg" in page and "<style>" in page


def test_one_bar_per_stage_of_the_typical_request_critical_ones_highlighted(
    profiles: list[Any], spec: Any
) -> None:
    page = render_html(analyze(profiles, spec), profiles, spec, replica_rates(spec))
    chosen = typical(profiles)
    assert chosen is not None
    found = bars(page)
    assert sorted(bar["data-stage"] for bar in found) == sorted(chosen.stages)
    assert chosen.critical_path == ("embed", "rerank", "generate")
    for bar in found:
        critical = bar["data-stage"] in chosen.critical_path
        assert ("critical" in bar["class"].split()) is critical
        assert bar["fill"] == (CRITICAL_COLOUR if critical else OTHER_COLOUR)
    # The bars run from start_ms to end_ms on one scale: widths proportional to durations.
    width = {bar["data-stage"]: float(bar["width"]) for bar in found}
    assert width["embed"] == pytest.approx(2 * width["retrieve"], abs=0.2)
    # A legend names both colours; the distributions and the summary have every stage.
    assert f"background:{CRITICAL_COLOUR}" in page and "on the critical path" in page
    assert f"background:{OTHER_COLOUR}" in page
    for name in ("retrieve", "embed", "rerank", "generate"):
        assert f'<g class="box" data-stage="{name}"' in page
        assert f"<td>{name}</td>" in page


def test_cache_hits_are_marked() -> None:
    records = [
        profile_record(
            12, ["a", "c"], stage("a", 0, 5, "miss"), stage("b", 0, 0.5, "hit"), stage("c", 5, 12)
        )
    ]
    profiles = [parse_profile(r, "x") for r in records]
    page = render_html(analyze(profiles), profiles, None, {})
    by_stage = {bar["data-stage"]: bar for bar in bars(page)}
    assert by_stage["b"]["class"].split() == ["bar", "hit"]
    assert by_stage["a"]["class"].split() == ["bar", "critical"]
    assert float(by_stage["b"]["width"]) >= 2  # a 0.5 ms hit still shows
    assert "0.5 ms \u2713 cache hit" in page
    assert page.count("cache hit</text>") == 1


def test_stage_names_are_escaped() -> None:
    hostile = "<b>x"
    records = [
        profile_record(20, [hostile], stage(hostile, 0, 15), stage('q"&<i>', 0, 5)),
        profile_record(22, [hostile], stage(hostile, 0, 17), stage('q"&<i>', 0, 5)),
    ]
    profiles = [parse_profile(r, "x") for r in records]
    report = analyze(profiles)
    assert any(hostile in text for text in report.recommendations)
    page = render_html(report, profiles, None, {})
    assert "<b>" not in page and "<i>" not in page
    assert "&lt;b&gt;x" in page
    assert 'data-stage="q&quot;&amp;&lt;i&gt;"' in page
    assert "<li>batch or scale &lt;b&gt;x: it is on the critical path" in page


def test_without_the_pipeline_prices_are_unknown(profiles: list[Any]) -> None:
    page = render_html(analyze(profiles), profiles, None, {})
    assert 'id="prices-unknown">Prices unknown' in page
    assert "<code>--pipeline FILE</code>" in page
    assert 'id="costs-table"' not in page


def test_costs_per_stage_and_share(profiles: list[Any], spec: Any) -> None:
    rates = replica_rates(spec)
    page = render_html(analyze(profiles, spec), profiles, spec, rates)
    assert "Prices unknown" not in page
    costs = {name: 0.0 for name in rates}
    for profile in profiles:
        for name, usd in stage_costs(profile, rates).items():
            costs[name] += usd / len(profiles)
    whole = sum(costs.values())
    # embed costs most (20 ms x 3, 10 ms once); retrieve's cache hit costs nothing.
    assert max(costs, key=lambda name: costs[name]) == "embed"
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", page.split('id="costs-table"')[1].split("</table>")[0])  # fmt: skip
    assert rows[0][0] == "embed"  # biggest first
    assert {row[0] for row in rows} == {"retrieve", "embed", "rerank", "generate"}
    by_stage = {name: (hourly, per_request) for name, hourly, per_request in rows}
    assert by_stage["embed"][0] == f"${rates['embed'] * 3600:.3g}"
    assert by_stage["embed"][1] == f"${costs['embed']:.3g}"
    assert f"<td>{costs['embed'] / whole:.0%}</td>" in page
    assert f"<th>${whole:.3g}</th>" in page


def test_recommendations_and_summary_figures(profiles: list[Any], spec: Any) -> None:
    report = analyze(profiles, spec)
    page = render_html(report, profiles, spec, replica_rates(spec))
    for text in report.recommendations:
        assert f"<li>{text}</li>" in page
    assert "end to end mean 47.8 ms, p50 42.0 ms, p95 63.0 ms" in page
    # retrieve: 4 calls, mean 15.25, p50 10, p95 40, critical 25%, hit ratio 25%.
    assert (
        "<tr><td>retrieve</td><td>4</td><td>15.2</td><td>10.0</td><td>40.0</td><td>25%</td>" in page
    )
    assert "critical path: embed &rarr; rerank &rarr; generate (75% of requests)" in page
    assert "unused stages: audit" in page


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(json.dumps(pipeline_doc()))
    return profiles, pipeline


def test_cli_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles, pipeline = write_inputs(tmp_path)
    out = tmp_path / "out.html"
    assert main([str(profiles), "--html", str(out)]) == 0
    assert "critical path: embed -> rerank -> generate" in capsys.readouterr().out
    page = out.read_text()
    assert len(bars(page)) == 4 and "Prices unknown" in page
    assert main([str(profiles), "--pipeline", str(pipeline), "--html", str(out)]) == 0
    assert 'id="costs-table"' in out.read_text()


def test_cli_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles, pipeline = write_inputs(tmp_path)
    out, prices = tmp_path / "out.html", tmp_path / "prices.yaml"
    prices.write_text("cpuCoreHour: 36\nmemoryGiBHour: 0\n")
    args = [str(profiles), "--pipeline", str(pipeline), "--html", str(out)]
    assert main([*args, "--prices", str(prices)]) == 0
    # 100m CPU (the default request) at 36 USD per core-hour: 3.6 USD per replica-hour.
    assert "<tr><td>embed</td><td>$3.6</td>" in out.read_text()
    prices.write_text("cpuCoreHour: -1\n")
    assert main([*args, "--prices", str(prices)]) == 1
    err = capsys.readouterr().err
    assert f"error: {prices}: invalid price table: cpuCoreHour" in err
    assert main([*args, "--prices", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    assert main([str(profiles), "--prices", str(prices), "--html", str(out)]) == 2
    assert "--prices needs --pipeline FILE" in capsys.readouterr().err


def test_cli_cannot_write_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles, _ = write_inputs(tmp_path)
    target = tmp_path / "no" / "such" / "dir" / "out.html"
    assert main([str(profiles), "--html", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"penstock analyze: error: cannot write {target}: No such file or directory"]


def test_help_documents_html_and_prices() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--html FILE also write a self-contained HTML page" in text
    assert "--prices FILE with --pipeline: a price table YAML" in text
