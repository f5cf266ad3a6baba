"""``penstock analyze --html FILE``: the report as one self-contained HTML page.

The page is meant to be opened from disk, mailed or attached to an issue, so it loads nothing:
inline CSS, inline SVG built here, no script, no font, no image, no link. It shows

- the waterfall of a typical request: among the profiles whose critical path is the most common
  one, the one whose ``total_ms`` is closest to their median; one bar per stage from
  ``start_ms`` to ``end_ms``, the critical path highlighted, cache hits marked;
- per-stage latency distributions: a box plot (whiskers p5-p95, box p25-p75, line at p50) on a
  shared axis, with the numbers (nearest-rank, as the text report);
- where the money goes: per-stage cost per request and its share (penstock.dev.costs), when the
  Pipeline is known; without it, a line saying prices are unknown and naming ``--pipeline``;
- the summary table and the recommendations of :class:`~penstock.dev.report.Report`.

Every string that comes from an input (stage names above all: they come from files) is written
with :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from penstock.api import PipelineSpec
from penstock.api.cost import PriceTable
from penstock.contract.profile import Profile
from penstock.dev.costs import stage_costs
from penstock.dev.profiles import AnalyzeError
from penstock.dev.report import Report
from penstock.dev.stats import percentile
from penstock.errors import bounded

__all__ = ["CRITICAL_COLOUR", "OTHER_COLOUR", "load_prices", "render_html", "typical", "write_html"]

# Fixed colours (not CSS variables): the browser test looks for these exact pixels.
CRITICAL_COLOUR = "#d9480f"
OTHER_COLOUR = "#4c6ef5"
HIT_COLOUR = "#2b8a3e"
_AXIS_COLOUR = "#868e96"

_LABEL_W = 170  # px for the stage names left of the plots
_PLOT_W = 620
_ROW_H = 26
_BAR_H = 16
_TOP = 24  # room for the tick labels above the first row

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #212529; margin: 24px; max-width: 1000px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dee2e6; padding-bottom: 4px; }
p.note { color: #495057; margin: 4px 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e9ecef; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f1f3f5; }
svg text { font: 12px system-ui, sans-serif; fill: #212529; }
svg .tick { fill: #495057; font-size: 11px; }
.legend span { display: inline-block; margin-right: 18px; }
.swatch { display: inline-block; width: 14px; height: 10px; margin-right: 5px;
  vertical-align: baseline; }
.unknown { background: #fff4e6; border-left: 4px solid #f08c00; padding: 6px 10px; }
ul.recs li { margin: 4px 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _usd(value: float) -> str:
    # Per-request costs are tiny (a CPU replica costs ~1e-5 USD per second): 3 significant
    # digits, never rounded to $0.0000.
    if value == 0:
        return "$0"
    if value >= 1000:
        return f"${value:,.0f}"
    return f"${value:.3g}"


def _nice_step(span: float, ticks: int = 8) -> float:
    """A 1, 2 or 5 times a power of ten step giving at most about ``ticks`` intervals."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _axis(end: float, height: float) -> tuple[float, str]:
    """The axis end (a whole number of steps) and the SVG of its ms ticks and grid lines."""
    step = _nice_step(end)
    count = max(1, math.ceil(end / step - 1e-9))
    last = count * step
    parts = []
    for i in range(count + 1):
        value = i * step
        x = _LABEL_W + _PLOT_W * value / last
        label = f"{value:g}" if i < count else f"{value:g} ms"
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP - 4}" x2="{x:.1f}" y2="{height:.1f}"'
            f' stroke="#e9ecef"/><text class="tick" x="{x:.1f}" y="{_TOP - 8}"'
            f' text-anchor="middle">{label}</text>'
        )
    return last, "".join(parts)


def typical(profiles: Sequence[Profile]) -> Profile | None:
    """The profile with the most common critical path whose total is closest to the median
    total of those (the first such one on a tie; Counter keeps first-seen order too)."""
    if not profiles:
        return None
    path = Counter(p.critical_path for p in profiles).most_common(1)[0][0]
    same = [p for p in profiles if p.critical_path == path]
    middle = statistics.median(p.total_ms for p in same)
    return min(same, key=lambda p: abs(p.total_ms - middle))


# --------------------------------------------------------------------------- sections


def _summary(report: Report) -> str:
    head = (
        "<tr><th>stage</th><th>calls</th><th>mean ms</th><th>p50 ms</th><th>p95 ms</th>"
        "<th>critical</th><th>wait ms</th><th>cache hit</th><th>batch fill</th></tr>"
    )
    rows = []
    for f in report.stages.values():
        hit, fill = f.hit_label, f.fill_label
        rows.append(
            f"<tr><td>{_e(f.name)}</td><td>{f.calls}</td><td>{_ms(f.mean_ms)}</td>"
            f"<td>{_ms(f.p50_ms)}</td><td>{_ms(f.p95_ms)}</td><td>{f.critical_share:.0%}</td>"
            f"<td>{_ms(f.wait_mean_ms)}</td><td>{hit}</td><td>{fill}</td></tr>"
        )
    path = " &rarr; ".join(_e(name) for name in report.critical_path) or "-"
    if report.repeated_requests is None:
        redundant = "unknown (the records carry no request bodies)"
    else:
        redundant = (
            f"{report.repeated_requests} of {report.requests} requests repeat an earlier"
            " request body"
        )
    notes = [
        f"critical path: {path} ({report.critical_path_share:.0%} of requests)",
        f"redundant calls: {redundant}",
    ]
    if report.unused_stages:
        notes.append("unused stages: " + ", ".join(_e(n) for n in report.unused_stages))
    return (
        '<h2 id="summary">Summary</h2>'
        f'<table id="summary-table">{head}{"".join(rows)}</table>'
        '<p class="note">critical: share of requests whose critical path has the stage;'
        " wait: mean time after its inputs were ready.</p>"
        + "".join(f'<p class="note">{note}</p>' for note in notes)
    )


def _waterfall(profiles: Sequence[Profile]) -> str:
    profile = typical(profiles)
    if profile is None or not profile.stages:
        return '<h2 id="waterfall">A typical request</h2><p class="note">No stages.</p>'
    # Start order reads top-down like the request went; the router's order on a tie.
    timings = sorted(profile.stages.values(), key=lambda t: t.start_ms)
    critical = set(profile.critical_path)
    height = _TOP + _ROW_H * len(timings) + 6
    end = max(profile.total_ms, *(t.end_ms for t in timings))
    last, axis = _axis(end, height - 4)

    def x(ms: float) -> float:
        return _LABEL_W + _PLOT_W * ms / last

    rows = []
    for i, t in enumerate(timings):
        y = _TOP + i * _ROW_H + (_ROW_H - _BAR_H) / 2
        on_path = t.name in critical
        colour = CRITICAL_COLOUR if on_path else OTHER_COLOUR
        kind = "bar critical" if on_path else "bar"
        hit = t.cache == "hit"
        # A bar at least 2 px wide, so that a 0 ms cache hit still shows.
        width = max(2.0, x(t.end_ms) - x(t.start_ms))
        tip = f"{t.name}: {t.start_ms:.1f} to {t.end_ms:.1f} ms ({t.duration_ms:.1f} ms)"
        if t.cache:
            tip += f", cache {t.cache}"
        rows.append(
            f'<text x="{_LABEL_W - 8}" y="{y + _BAR_H - 3:.1f}" text-anchor="end">{_e(t.name)}'
            "</text>"
            f'<rect class="{kind}{" hit" if hit else ""}" data-stage="{_e(t.name)}"'
            f' x="{x(t.start_ms):.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR_H}"'
            f' fill="{colour}"><title>{_e(tip)}</title></rect>'
        )
        label = f"{t.duration_ms:.1f} ms"
        if hit:
            # The mark: a green outline and the words, not only a colour.
            rows.append(
                f'<rect x="{x(t.start_ms) - 2:.1f}" y="{y - 2:.1f}" width="{width + 4:.1f}"'
                f' height="{_BAR_H + 4}" fill="none" stroke="{HIT_COLOUR}" stroke-width="2"'
                ' stroke-dasharray="3 2"/>'
            )
            label += " \u2713 cache hit"
        fill = f' fill="{HIT_COLOUR}"' if hit else ""
        rows.append(
            f'<text x="{x(t.start_ms) + width + 6:.1f}" y="{y + _BAR_H - 3:.1f}"{fill}>'
            f"{_e(label)}</text>"
        )
    total_x = x(profile.total_ms)
    rows.append(
        f'<line x1="{total_x:.1f}" y1="{_TOP - 4}" x2="{total_x:.1f}" y2="{height - 4}"'
        f' stroke="{_AXIS_COLOUR}" stroke-dasharray="4 3"><title>end of the request:'
        f" {profile.total_ms:.1f} ms</title></line>"
    )
    index = next(i for i, p in enumerate(profiles, 1) if p is profile)
    path = " &rarr; ".join(_e(name) for name in profile.critical_path) or "-"
    legend = (
        '<p class="legend">'
        f'<span><i class="swatch" style="background:{CRITICAL_COLOUR}"></i>on the critical'
        " path</span>"
        f'<span><i class="swatch" style="background:{OTHER_COLOUR}"></i>other stage</span>'
        f'<span><i class="swatch" style="border:2px dashed {HIT_COLOUR};height:6px;width:10px">'
        "</i>cache hit</span>"
        f'<span><i class="swatch" style="border-left:2px dashed {_AXIS_COLOUR};width:2px"></i>'
        "end of the request</span></p>"
    )
    width = _LABEL_W + _PLOT_W + 150  # room for the duration labels right of the bars
    return (
        '<h2 id="waterfall">A typical request</h2>'
        f'<p class="note">Request {index} of {len(profiles)}: {profile.total_ms:.1f} ms end to'
        f" end, critical path {path} (the most common one; of the requests with it, the one"
        " closest to their median time).</p>"
        f'<svg id="waterfall-svg" width="{width}" height="{height}" role="img"'
        f' aria-label="waterfall of a typical request">{axis}{"".join(rows)}</svg>{legend}'
    )


def _distributions(report: Report, profiles: Sequence[Profile]) -> str:
    durations: dict[str, list[float]] = {name: [] for name in report.stages}
    for profile in profiles:
        for name, t in profile.stages.items():
            durations.setdefault(name, []).append(t.duration_ms)
    names = [name for name, values in durations.items() if values]
    if not names:
        return '<h2 id="distributions">Stage latency</h2><p class="note">No stages.</p>'
    quantiles = {
        name: [percentile(durations[name], q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)]
        for name in names
    }
    height = _TOP + _ROW_H * len(names) + 6
    last, axis = _axis(max(q[-1] for q in quantiles.values()) or 1.0, height - 4)

    def x(ms: float) -> float:
        return _LABEL_W + _PLOT_W * ms / last

    rows, table = [], []
    for i, name in enumerate(names):
        p5, p25, p50, p75, p95 = quantiles[name]
        mid = _TOP + i * _ROW_H + _ROW_H / 2
        top = mid - _BAR_H / 2
        rows.append(
            f'<text x="{_LABEL_W - 8}" y="{mid + 4:.1f}" text-anchor="end">{_e(name)}</text>'
            f'<g class="box" data-stage="{_e(name)}" stroke="#343a40">'
            f'<line x1="{x(p5):.1f}" y1="{mid:.1f}" x2="{x(p95):.1f}" y2="{mid:.1f}"/>'
            f'<line x1="{x(p5):.1f}" y1="{top + 3:.1f}" x2="{x(p5):.1f}"'
            f' y2="{top + _BAR_H - 3:.1f}"/>'
            f'<line x1="{x(p95):.1f}" y1="{top + 3:.1f}" x2="{x(p95):.1f}"'
            f' y2="{top + _BAR_H - 3:.1f}"/>'
            f'<rect x="{x(p25):.1f}" y="{top:.1f}" width="{max(1.0, x(p75) - x(p25)):.1f}"'
            f' height="{_BAR_H}" fill="#dbe4ff"/>'
            f'<line x1="{x(p50):.1f}" y1="{top:.1f}" x2="{x(p50):.1f}" y2="{top + _BAR_H:.1f}"'
            ' stroke-width="2.5"/>'
            f"<title>{_e(name)}: p5 {p5:.1f}, p25 {p25:.1f}, p50 {p50:.1f}, p75 {p75:.1f},"
            f" p95 {p95:.1f} ms</title></g>"
        )
        values = durations[name]
        table.append(
            f"<tr><td>{_e(name)}</td><td>{len(values)}</td><td>{_ms(min(values))}</td>"
            + "".join(f"<td>{_ms(v)}</td>" for v in quantiles[name])
            + f"<td>{_ms(max(values))}</td></tr>"
        )
    return (
        '<h2 id="distributions">Stage latency</h2>'
        '<p class="note">Duration of each stage call (end_ms - start_ms): whiskers p5 to p95,'
        " box p25 to p75, the thick line at p50 (nearest-rank percentiles).</p>"
        f'<svg id="distributions-svg" width="{_LABEL_W + _PLOT_W + 30}" height="{height}"'
        f' role="img" aria-label="per-stage latency">{axis}{"".join(rows)}</svg>'
        '<table id="distributions-table"><tr><th>stage</th><th>calls</th><th>min</th>'
        "<th>p5</th><th>p25</th><th>p50</th><th>p75</th><th>p95</th><th>max</th></tr>"
        f"{''.join(table)}</table>"
        '<p class="note">milliseconds</p>'
    )


def _costs(
    report: Report,
    profiles: Sequence[Profile],
    spec: PipelineSpec | None,
    rates: Mapping[str, float],
) -> str:
    head = '<h2 id="costs">Where the money goes</h2>'
    if spec is None or not rates:
        return (
            f'{head}<p class="unknown" id="prices-unknown">Prices unknown: costs need the'
            " Pipeline (its stages' resources set each replica's price). Run again with"
            " <code>--pipeline FILE</code> (and <code>--prices FILE</code> for a price table"
            " other than the defaults).</p>"
        )
    totals: Counter[str] = Counter()
    for profile in profiles:
        totals.update(stage_costs(profile, rates))
    count = max(1, len(profiles))
    whole = sum(totals.values())
    seen = [name for name in report.stages if name in rates]
    unpriced = [name for name in report.stages if name not in rates]
    seen.sort(key=lambda name: -totals[name])
    rows = []
    for name in seen:
        share = totals[name] / whole if whole else 0.0
        bar = (
            f'<svg width="120" height="12"><rect width="120" height="12" fill="#f1f3f5"/>'
            f'<rect width="{120 * share:.1f}" height="12" fill="{OTHER_COLOUR}"/></svg>'
        )
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_usd(rates[name] * 3600)}</td>"
            f"<td>{_usd(totals[name] / count)}</td><td>{_usd(totals[name] / count * 1e6)}</td>"
            f"<td>{share:.0%}</td><td>{bar}</td></tr>"
        )
    rows.append(
        f"<tr><th>all stages</th><th></th><th>{_usd(whole / count)}</th>"
        f"<th>{_usd(whole / count * 1e6)}</th><th>{'100%' if whole else '-'}</th><th></th></tr>"
    )
    notes = [
        "A call holds one replica for its duration and costs the replica's hourly price per"
        " second held; a cache hit costs nothing (as the gateway's penstock_stage_cost_usd_total"
        " counts it). Mean over the requests; replicas idle between requests are not counted."
    ]
    if unpriced:
        notes.append(
            "Not in the Pipeline, so not priced: " + ", ".join(_e(n) for n in unpriced) + "."
        )
    return (
        f'{head}<table id="costs-table"><tr><th>stage</th><th>replica per hour</th>'
        "<th>per request</th><th>per million requests</th><th>share</th><th></th></tr>"
        f"{''.join(rows)}</table>" + "".join(f'<p class="note">{n}</p>' for n in notes)
    )


def _recommendations(report: Report) -> str:
    items = "".join(f"<li>{_e(text)}</li>" for text in report.recommendations)
    body = f'<ul class="recs">{items}</ul>' if items else '<p class="note">(none)</p>'
    return f'<h2 id="recommendations">Recommendations</h2>{body}'


def render_html(
    report: Report,
    profiles: Sequence[Profile],
    spec: PipelineSpec | None,
    rates: Mapping[str, float],
) -> str:
    """The whole page; ``rates`` are USD per replica-second (penstock.dev.costs.replica_rates)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>penstock analyze: {report.requests} requests</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>penstock analyze</h1>"
        f'<p class="note">{report.requests} requests: end to end mean'
        f" {_ms(report.total_mean_ms)} ms, p50 {_ms(report.total_p50_ms)} ms, p95"
        f" {_ms(report.total_p95_ms)} ms</p>"
        + _waterfall(profiles)
        + _distributions(report, profiles)
        + _costs(report, profiles, spec, rates)
        + _recommendations(report)
        + _summary(report)
        + "</body></html>\n"
    )


# --------------------------------------------------------------------------- files


def load_prices(path: str) -> PriceTable:
    """``--prices FILE``, or an AnalyzeError naming the file."""
    try:
        return PriceTable.from_file(path)
    except ValidationError as error:  # a ValueError too, but its text is many lines
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise AnalyzeError(
            bounded(f"{path}: invalid price table: {where}: {first['msg']}")
        ) from None
    except ValueError as error:
        text = str(error)
        raise AnalyzeError(bounded(text if path in text else f"{path}: {text}")) from None


def write_html(path: str, page: str) -> None:
    """Write the page, or an AnalyzeError naming ``path``."""
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as error:
        raise AnalyzeError(f"cannot write {path}: {error.strerror or error}") from None
