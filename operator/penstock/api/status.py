"""The Pipeline status: what the operator observed. Written only by the operator."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from penstock.api.types import ApiModel

# Pipeline: Ready, Valid, Progressing, Degraded, MetricsAvailable; PipelineRun: Valid, Complete,
# Failed (as a Job).
ConditionType = Literal[
    "Ready", "Valid", "Progressing", "Degraded", "MetricsAvailable", "Complete", "Failed"
]
ConditionStatus = Literal["True", "False", "Unknown"]
SavingReason = Literal["cache", "semantic", "coalesced", "batching"]


class StatusModel(ApiModel):
    """Written by the operator, so also built from Python names (a user never writes status)."""

    model_config = ConfigDict(**{**ApiModel.model_config, "validate_by_name": True})


class Condition(StatusModel):
    """A condition per the Kubernetes API conventions."""

    type: str = Field(max_length=64)
    """Ready, Valid, Progressing, Degraded, MetricsAvailable; Complete, Failed (a run)."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(max_length=128, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable explanation."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was computed from."""
    last_transition_time: str = Field(max_length=64)
    """When the status last flipped (RFC 3339)."""


class VariantStatus(StatusModel):
    """What the operator observed of one variant of a stage."""

    name: str = Field(max_length=63)
    """Variant name."""
    desired_replicas: int = Field(default=0, ge=0)
    """Replicas the variant's Deployment asks for."""
    ready_replicas: int = Field(default=0, ge=0)
    """Replicas ready to serve."""
    hourly_cost: str | None = Field(default=None, max_length=32)
    """Cost of the variant's current replicas per hour, USD."""
    served_share: float | None = Field(default=None, ge=0, le=1)
    """Share of the stage's answers this variant gave (router, 15 minutes)."""
    escalated_share: float | None = Field(default=None, ge=0, le=1)
    """Share of its calls a cascade went on from (low confidence or failed), 15 minutes."""
    cost_per_request: str | None = Field(default=None, max_length=32)
    """Attributed cost per request through its gateways, USD (3 significant digits)."""


class StageStatus(StatusModel):
    """What the operator observed of one stage."""

    name: str = Field(max_length=63)
    """Stage name."""
    desired_replicas: int = Field(default=0, ge=0)
    """Replicas the stage's Deployment asks for."""
    ready_replicas: int = Field(default=0, ge=0)
    """Replicas ready to serve."""
    observed_rps: float | None = None
    """Requests per second observed at the stage's gateways."""
    capacity_per_replica: float | None = None
    """Requests per second one replica can serve, measured."""
    utilization: float | None = None
    """Observed load divided by capacity."""
    recommended_replicas: int | None = None
    """Replicas the throughput tuner recommends."""
    hourly_cost: str | None = Field(default=None, max_length=32)
    """Cost of the stage's current replicas per hour, USD."""
    saved_hourly_cost: str | None = Field(default=None, max_length=32)
    """Replica cost per hour its gateways saved (cache hits, coalescing, batching), USD."""
    cost_per_request: str | None = Field(default=None, max_length=32)
    """Attributed cost per request through its gateways, USD (3 significant digits)."""
    cost_per_million_tokens: str | None = Field(default=None, max_length=32)
    """Attributed cost per 1M tokens the stage reported using, USD (LLM stages)."""
    variants: list[VariantStatus] | None = Field(default=None, max_length=8)
    """A stage with variants: each one's figures (the stage's are their sums)."""


class SavingsByReason(StatusModel):
    """What one optimization saved, per hour over the tuner's window."""

    reason: SavingReason
    """cache, semantic (hits), coalesced (shared in-flight calls) or batching."""
    usd_per_hour: str = Field(max_length=32)
    """Replica cost not spent per hour, USD."""
    stage_seconds_per_hour: float = Field(ge=0)
    """Stage replica-seconds not spent per hour."""


class Savings(StatusModel):
    """What the Pipeline's optimizations saved per hour, from its gateways' metrics."""

    usd_per_hour: str = Field(max_length=32)
    """Replica cost not spent per hour, all stages and reasons, USD."""
    stage_seconds_per_hour: float = Field(ge=0)
    """Stage replica-seconds not spent per hour."""
    by_reason: list[SavingsByReason] = Field(default_factory=list, max_length=8)
    """The same by optimization."""


class PipelineStatus(StatusModel):
    """Observed state of a Pipeline."""

    observed_generation: int | None = None
    """The .metadata.generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready, Valid, Progressing, Degraded."""
    stages: list[StageStatus] = Field(default_factory=list, max_length=64)
    """Per-stage replicas, load and cost."""
    stages_ready: str | None = Field(default=None, max_length=16)
    """Ready stages over all stages, e.g. 3/4."""
    bottleneck: str | None = Field(default=None, max_length=63)
    """The stage limiting the pipeline's throughput."""
    critical_path: list[str] | None = Field(default=None, max_length=64)
    """The chain of stages that determines end-to-end latency."""
    hourly_cost: str | None = Field(default=None, max_length=32)
    """Cost of all stages per hour, USD."""
    savings: Savings | None = None
    """What caching, coalescing and batching saved per hour (needs Prometheus)."""
    router_url: str | None = Field(default=None, max_length=512)
    """In-cluster URL of the pipeline's router."""
    warnings: list[str] | None = Field(default=None, max_length=64)
    """Validation warnings, e.g. stages whose result nothing uses."""
