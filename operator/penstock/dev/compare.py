"""``penstock analyze --compare BEFORE AFTER``: did a change make the Pipeline faster or cheaper?

Two sets of router profiles (before and after a change) side by side: end to end p50/p95, per
stage p50/p95 duration (stages of either set), and, with the Pipeline's prices, the mean cost per
request and per stage per request (a request that does not call a stage costs 0 for it; see
penstock.dev.costs). Every figure comes with its change (after - before, absolute and %) and a
95% confidence interval of that change by bootstrap: each set is resampled with replacement,
independently, the statistic recomputed, and the 2.5th and 97.5th percentiles of the resampled
differences taken. A row says faster/slower (cheaper/dearer) only when the interval excludes 0,
else "within noise": two runs of the same Pipeline never differ by exactly 0.

Percentiles are analyze's nearest rank (penstock.dev.stats), on the figures and on every
resample alike. The resampling is seeded, so the same files and seed print the same intervals;
it runs on numpy, in chunks of bounded size (memory stays at tens of MB whatever the count).
Pure: profiles and rates in, a :class:`Comparison` out; :func:`render_comparison` and
:func:`comparison_json` print it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from penstock.contract.profile import Profile
from penstock.dev.costs import request_cost, stage_costs
from penstock.dev.profiles import AnalyzeError
from penstock.dev.stats import percentile, percentile_rows

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Array = npt.NDArray[np.float64]

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "MAX_RESAMPLES",
    "MIN_RESAMPLES",
    "Change",
    "Comparison",
    "SetInfo",
    "compare",
    "comparison_json",
    "render_comparison",
]

DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 100
MAX_RESAMPLES = 100_000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# The interval's ends as literals: (1 - 0.95) / 2 is 0.025000000000000022 in floating point,
# whose nearest rank over 2000 resamples is the 51st, not the 50th.
_CI_ENDS = (0.025, 0.975)
PIPELINE_NEEDED = "unknown: needs --pipeline FILE (the stages' prices)"
# Values gathered per chunk of resamples: 2 MB arrays stay in cache (measured: 2x faster than
# 16 MB ones) and memory stays bounded whatever --bootstrap asks.
_CHUNK_VALUES = 250_000
_QUANTILES = {"p50": 0.5, "p95": 0.95}

Kind = Literal["time", "cost"]
_WORDS: dict[Kind, tuple[str, str]] = {"time": ("faster", "slower"), "cost": ("cheaper", "dearer")}


@dataclass(frozen=True)
class Change:
    """One figure before and after; None where it cannot be known (the note says why)."""

    before: float | None
    after: float | None
    change: float | None = None
    change_pct: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str = "unknown"
    note: str = ""


@dataclass(frozen=True)
class SetInfo:
    label: str
    requests: int


@dataclass
class Comparison:
    before: SetInfo
    after: SetInfo
    resamples: int
    seed: int
    end_to_end: dict[str, Change]  # "p50", "p95" (ms)
    stages: dict[str, dict[str, Change]]  # stage -> "p50", "p95" (ms)
    request_cost: Change  # USD per request
    stage_costs: dict[str, Change] = field(default_factory=dict)  # stage -> USD per request
    costs_known: bool = False


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class _Sample:
    values: list[float]
    statistics: tuple[str, ...]  # names in _QUANTILES, or "mean"
    by_request: bool  # one value per request: resampled with the set's shared indices


def _statistics(rows: Array, names: tuple[str, ...]) -> dict[str, Array]:
    result: dict[str, Array] = {}
    if "mean" in names:
        result["mean"] = rows.mean(axis=1)
    quantiles = [name for name in names if name in _QUANTILES]
    if quantiles:
        # rows is this chunk's scratch copy of the resampled values: sorted in place (last).
        columns = percentile_rows(rows, [_QUANTILES[name] for name in quantiles], overwrite=True)
        result.update(zip(quantiles, columns, strict=True))
    return result


def _replicates(
    samples: Mapping[str, _Sample], requests: int, resamples: int, seed: int, stream: int
) -> dict[str, dict[str, Array]]:
    """Each sample's statistics over ``resamples`` resamples with replacement."""
    # Imported here: numpy's import would add a noticeable part of a second to every
    # penstock analyze start, --compare or not.
    import numpy as np

    # Independent streams per set (stream 0, 1): resampling one never shifts the other's draws.
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[stream])
    arrays = {key: np.asarray(sample.values, dtype=np.float64) for key, sample in samples.items()}
    longest = max([requests, *(len(sample.values) for sample in samples.values())])
    chunk = max(1, min(resamples, _CHUNK_VALUES // longest))
    parts: dict[str, dict[str, list[Array]]] = defaultdict(lambda: defaultdict(list))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        # Figures with one value per request are resampled by request, jointly: the same
        # resampled requests give the end to end time and the costs, as a rerun would.
        shared = rng.integers(0, requests, size=(size, requests))
        for key, sample in samples.items():
            count = len(sample.values)
            index = shared if sample.by_request else rng.integers(0, count, size=(size, count))
            for name, values in _statistics(arrays[key][index], sample.statistics).items():
                parts[key][name].append(values)
        done += size
    return {
        key: {name: np.concatenate(chunks) for name, chunks in figures.items()}
        for key, figures in parts.items()
    }


def _change(before: float, after: float, diffs: Array, kind: Kind) -> Change:
    ordered = diffs.tolist()
    low, high = (percentile(ordered, end) for end in _CI_ENDS)
    better, worse = _WORDS[kind]
    verdict = better if high < 0 else worse if low > 0 else "within noise"
    delta = after - before
    pct = delta / before * 100 if before else None
    return Change(before, after, delta, pct, low, high, verdict)


# --------------------------------------------------------------------------- comparison


def _stage_names(sets: Sequence[Sequence[Profile]]) -> list[str]:
    names: dict[str, None] = {}  # insertion-ordered: before's stages, then after's new ones
    for profiles in sets:
        for profile in profiles:
            names.update(dict.fromkeys(profile.stages))
    return list(names)


def _samples(
    profiles: Sequence[Profile], names: Sequence[str], rates: Mapping[str, float]
) -> tuple[dict[str, _Sample], dict[str, float]]:
    """The samples of one set to resample, and their statistics on the set itself."""
    samples: dict[str, _Sample] = {}
    count = len(profiles)
    totals = [profile.total_ms for profile in profiles]
    samples["total"] = _Sample(totals, tuple(_QUANTILES), True)
    for name in names:
        durations = [p.stages[name].duration_ms for p in profiles if name in p.stages]
        if durations:
            aligned = len(durations) == count  # every request called it
            samples[f"stage:{name}"] = _Sample(durations, tuple(_QUANTILES), aligned)
    if rates:
        costs = [request_cost(profile, rates) or 0.0 for profile in profiles]
        samples["cost"] = _Sample(costs, ("mean",), True)
        per_stage = [stage_costs(profile, rates) for profile in profiles]
        for name in names:
            if name in rates:
                values = [c.get(name, 0.0) for c in per_stage]
                samples[f"cost:{name}"] = _Sample(values, ("mean",), True)
    point: dict[str, float] = {}
    for key, sample in samples.items():
        values = sample.values
        for statistic in sample.statistics:
            value = (
                math.fsum(values) / len(values)
                if statistic == "mean"
                else percentile(values, _QUANTILES[statistic])
            )
            point[f"{key}/{statistic}"] = value
    return samples, point


def compare(
    before: Sequence[Profile],
    after: Sequence[Profile],
    rates: Mapping[str, float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    labels: tuple[str, str] = ("BEFORE", "AFTER"),
) -> Comparison:
    """Before vs after, with bootstrap intervals; ``rates`` as penstock.dev.costs.replica_rates
    ({} when the prices are unknown). ``labels`` name the sets (the files) in errors and output.
    """
    for profiles, label in zip((before, after), labels, strict=True):
        if len(profiles) < 2:
            raise AnalyzeError(
                f"{label}: a comparison needs at least 2 profiles per set (got {len(profiles)})"
            )
    if resamples < 1 or seed < 0:
        raise ValueError(f"resamples must be positive and seed 0 or more ({resamples}, {seed})")
    names = _stage_names([before, after])
    sides = []
    for stream, profiles in enumerate((before, after)):
        samples, point = _samples(profiles, names, rates)
        sides.append((point, _replicates(samples, len(profiles), resamples, seed, stream)))
    (before_point, before_reps), (after_point, after_reps) = sides

    def change(key: str, statistic: str, kind: Kind) -> Change:
        figure = f"{key}/{statistic}"
        if figure not in before_point or figure not in after_point:
            only = "only in before" if figure in before_point else "only in after"
            return Change(before_point.get(figure), after_point.get(figure), verdict=only)
        diffs = after_reps[key][statistic] - before_reps[key][statistic]
        return _change(before_point[figure], after_point[figure], diffs, kind)

    comparison = Comparison(
        before=SetInfo(labels[0], len(before)),
        after=SetInfo(labels[1], len(after)),
        resamples=resamples,
        seed=seed,
        end_to_end={q: change("total", q, "time") for q in _QUANTILES},
        stages={
            name: {q: change(f"stage:{name}", q, "time") for q in _QUANTILES} for name in names
        },
        request_cost=Change(None, None, note=PIPELINE_NEEDED),
        stage_costs={name: Change(None, None, note=PIPELINE_NEEDED) for name in names},
        costs_known=bool(rates),
    )
    if rates:
        unpriced = [name for name in names if name not in rates]
        note = ""
        if unpriced:
            note = f"counts only the stages in the Pipeline (not {', '.join(unpriced)})"
        comparison.request_cost = replace(change("cost", "mean", "cost"), note=note)
        comparison.stage_costs = {
            name: change(f"cost:{name}", "mean", "cost")
            if name in rates
            else Change(None, None, note="unknown: not a stage of the Pipeline")
            for name in names
        }
    return comparison


# --------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _usd(value: float | None) -> str:
    # A CPU replica costs ~1e-5 USD per second: 3 significant digits, never rounded to 0.0000.
    return "-" if value is None else "0" if value == 0 else f"{value:.3g}"


def _rows(comparison: Comparison) -> list[tuple[str, Change, Kind]]:
    rows: list[tuple[str, Change, Kind]] = [
        (f"end to end {q}", change, "time") for q, change in comparison.end_to_end.items()
    ]
    for name, figures in comparison.stages.items():
        rows += [(f"{name} {q}", change, "time") for q, change in figures.items()]
    rows.append(("cost per request", comparison.request_cost, "cost"))
    rows += [(f"cost of {name}", change, "cost") for name, change in comparison.stage_costs.items()]
    return rows


def _cells(label: str, change: Change, kind: Kind) -> list[str]:
    if change.before is None and change.after is None:
        return [label, "unknown", "unknown", "-", "-", "-", change.note]
    number = _ms if kind == "time" else _usd
    delta, pct, ci = "-", "-", "-"
    if change.change is not None:
        delta = ("+" if change.change > 0 else "") + number(change.change)
    if change.change_pct is not None:
        pct = f"{change.change_pct:+.1f}%"
    if change.ci_low is not None and change.ci_high is not None:
        ci = f"[{number(change.ci_low)}, {number(change.ci_high)}]"
    verdict = f"{change.verdict} ({change.note})" if change.note else change.verdict
    return [label, number(change.before), number(change.after), delta, pct, ci, verdict]


def render_comparison(comparison: Comparison) -> str:
    before, after = comparison.before, comparison.after
    table = [["figure", "before", "after", "change", "%", "95% CI of change", "verdict"]]
    table += [_cells(label, change, kind) for label, change, kind in _rows(comparison)]
    widths = [max(len(row[column]) for row in table) for column in range(6)]
    lines = [
        f"before: {before.label} ({before.requests} requests)",
        f"after:  {after.label} ({after.requests} requests)",
        "",
    ]
    for row in table:
        label, *numbers, ci, verdict = row
        # Figure name left, numbers right-aligned, the interval and verdict left: columns fit
        # the widest cell (stage names and USD figures vary in length).
        cells = [label.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(numbers, widths[1:5], strict=True)]
        cells += [ci.ljust(widths[5]), verdict]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "(times in ms: p50/p95 of the requests, per stage of its calls; costs in USD, mean per"
        " request)",
        f"change = after - before; 95% CI by bootstrap ({comparison.resamples} resamples of each"
        f" set, seed {comparison.seed});",
        "a verdict only when the CI excludes 0, else within noise",
    ]
    return "\n".join(lines)


def _change_json(change: Change) -> dict[str, Any]:
    ci = None
    if change.ci_low is not None and change.ci_high is not None:
        ci = [change.ci_low, change.ci_high]
    result: dict[str, Any] = {
        "before": change.before,
        "after": change.after,
        "change": change.change,
        "change_pct": change.change_pct,
        "ci95": ci,
        "verdict": change.verdict,
    }
    if change.note:
        result["note"] = change.note
    return result


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as JSON-ready data (times in ms, costs in USD per request)."""
    return {
        "before": {"file": comparison.before.label, "requests": comparison.before.requests},
        "after": {"file": comparison.after.label, "requests": comparison.after.requests},
        "bootstrap": {
            "resamples": comparison.resamples,
            "seed": comparison.seed,
            "confidence": CONFIDENCE,
        },
        "end_to_end_ms": {q: _change_json(c) for q, c in comparison.end_to_end.items()},
        "stages_ms": {
            name: {q: _change_json(c) for q, c in figures.items()}
            for name, figures in comparison.stages.items()
        },
        "cost_usd": {
            "known": comparison.costs_known,
            "request": _change_json(comparison.request_cost),
            "stages": {name: _change_json(c) for name, c in comparison.stage_costs.items()},
        },
    }
