"""The figures ``penstock analyze`` computes, and how they are printed (a table or JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class VariantFigures:
    """One variant of a stage, from the profiles' attempts (calls are attempts, not requests)."""

    name: str
    calls: int
    served: int
    low_confidence: int
    failed: int
    confident: int  # answers at or above minConfidence, or with none reported
    mean_ms: float
    p50_ms: float

    @property
    def served_share(self) -> float:
        return self.served / self.calls if self.calls else 0.0

    @property
    def confident_share(self) -> float:
        """Of its calls, the answers a cascade would have kept (a failure is not one)."""
        return self.confident / self.calls if self.calls else 0.0


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
    cost_usd: float | None = None  # mean per request, from traces (analyze --jaeger)
    saved_usd: float | None = None  # mean per request its gateway saved, from traces
    tokens_per_request: float | None = None  # tokens it reported, mean per request
    cost_per_million_tokens_usd: float | None = None
    variants: dict[str, VariantFigures] = field(default_factory=dict)
    """A stage with variants: each one's figures, lightest first (the Pipeline's order)."""

    @property
    def hit_ratio(self) -> float | None:
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else None

    @property
    def hit_label(self) -> str:
        """The cache hit column: a percentage, or - without lookups."""
        return "-" if self.hit_ratio is None else f"{self.hit_ratio:.0%}"

    @property
    def fill_label(self) -> str:
        """The batch fill column: of maxBatchSize when known, else the mean batch size."""
        if self.batch_fill is not None:
            return f"{self.batch_fill:.0%}"
        if self.batch_mean_size is not None:
            return f"{self.batch_mean_size:.1f}/batch"
        return "-"


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
    cost_per_request_usd: float | None = None  # mean, from traces (analyze --jaeger)
    saved_per_request_usd: dict[str, float] | None = None  # mean by reason, from traces

    @property
    def repeat_ratio(self) -> float | None:
        if self.repeated_requests is None or not self.requests:
            return None
        return self.repeated_requests / self.requests


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
        hit, fill = figures.hit_label, figures.fill_label
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
    if report.cost_per_request_usd is not None:
        per_stage = ", ".join(
            f"{f.name} ${f.cost_usd:.6f}" for f in report.stages.values() if f.cost_usd is not None
        )
        lines.append(f"cost: ${report.cost_per_request_usd:.6f} per request ({per_stage})")
    if report.saved_per_request_usd:
        reasons = ", ".join(f"{r} ${v:.6f}" for r, v in report.saved_per_request_usd.items())
        total = sum(report.saved_per_request_usd.values())
        lines.append(f"saved: ${total:.6f} per request by the gateways ({reasons})")
    for f in report.stages.values():
        if f.cost_per_million_tokens_usd is not None and f.tokens_per_request is not None:
            lines.append(
                f"tokens: {f.name} {f.tokens_per_request:.0f} per request,"
                f" ${f.cost_per_million_tokens_usd:.4f} per 1M tokens"
            )
    for f in report.stages.values():
        if f.variants:
            each = "; ".join(
                f"{v.name} {v.calls} calls, served {v.served_share:.0%}"
                f" ({v.low_confidence} low confidence, {v.failed} failed), {v.mean_ms:.1f} ms mean"
                for v in f.variants.values()
            )
            lines.append(f"variants of {f.name}: {each}")
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
                "cost_usd": f.cost_usd,
                "saved_usd": f.saved_usd,
                "tokens_per_request": f.tokens_per_request,
                "cost_per_million_tokens_usd": f.cost_per_million_tokens_usd,
                "variants": {
                    v.name: {
                        "calls": v.calls,
                        "served": v.served,
                        "low_confidence": v.low_confidence,
                        "failed": v.failed,
                        "confident": v.confident,
                        "mean_ms": v.mean_ms,
                        "p50_ms": v.p50_ms,
                    }
                    for v in f.variants.values()
                },
            }
            for name, f in report.stages.items()
        },
        "critical_path": list(report.critical_path),
        "critical_path_share": report.critical_path_share,
        "repeated_requests": report.repeated_requests,
        "unused_stages": report.unused_stages,
        "recommendations": report.recommendations,
        "cost_per_request_usd": report.cost_per_request_usd,
        "saved_per_request_usd": report.saved_per_request_usd,
    }
