"""The Pipeline spec: what a user declares. Field names follow DESIGN.md's sketch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from penstock.api import graph as stage_graph
from penstock.api.container import RESOURCE_NAME, EnvVar, Resources, Toleration
from penstock.api.features import Batching, Cache, Cost, Model, Scaling
from penstock.api.types import (
    LABEL_VALUE,
    ApiModel,
    Dns1123Label,
    StageName,
    cel_rules,
)

MAX_STAGES = 32
MAX_VARIANTS = 4
# What a variant may replace of its stage (everything else, and these when unset, it inherits).
VARIANT_FIELDS = (
    "image",
    "image_pull_policy",
    "command",
    "args",
    "env",
    "resources",
    "model",
    "scaling",
    "cost",
    "timeout_seconds",
    "node_selector",
    "tolerations",
)
# Stage names the data plane uses itself (dataplane/router/topology.py, render/router.py).
RESERVED_STAGE_NAMES = {
    "router": "'router' is reserved: the pipeline's router is named <pipeline>-router",
    "input": "'input' is reserved: a stage's request body has the key \"input\" for the"
    " pipeline input, next to its dependencies' outputs",
}


VariantName = Annotated[
    str, Field(min_length=1, max_length=20, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


class Variant(ApiModel):
    """One way to serve a stage, e.g. a light model beside a heavy one: its own Deployment,
    Service and HorizontalPodAutoscaler (<pipeline>-<stage>-<variant>). A field it leaves unset
    is the stage's."""

    name: VariantName
    """Variant name, a DNS-1123 label of at most 20 characters, unique in the stage."""
    image: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Container image. Default: the stage's."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy. Default: the stage's."""
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=64
    )
    """Entrypoint override. Default: the stage's."""
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(default=None, max_length=64)
    """Arguments to the entrypoint. Default: the stage's."""
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    """Environment variables; replaces the stage's list as a whole. Default: the stage's."""
    resources: Resources | None = None
    """Compute resources. Default: the stage's."""
    model: Model | None = None
    """Model artifact preloaded for this variant. Default: the stage's."""
    scaling: Scaling | None = None
    """Autoscaling of this variant's replicas. Default: the stage's."""
    cost: Cost | None = None
    """Cost attribution override of one replica. Default: the stage's."""
    timeout_seconds: int | None = Field(default=None, ge=1, le=3600)
    """Longest time one call of this variant may take. Default: the stage's timeoutSeconds."""
    node_selector: dict[Annotated[str, Field(max_length=317, pattern=RESOURCE_NAME)], Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = Field(default=None, max_length=16)  # fmt: skip
    """Node labels its pods must match. Default: the stage's."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=16)
    """Taints its pods tolerate. Default: the stage's."""
    weight: int = Field(default=1, ge=0, le=1000)
    """policy weighted: its share of the requests is weight / the sum of weights. Default 1."""
    latency_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    """policy budget: the latency expected of one call, until the router has measured it (8
    calls). Default: unknown, taken as 0 (the variant is tried when it comes first)."""


class VariantPolicy(ApiModel):
    """Which variant serves a request."""

    type: Literal["cascade", "budget", "weighted"] = "cascade"
    """cascade (default): the variants in order, lightest first; the next one is called when
    one fails or reports a confidence below minConfidence (response header
    X-Penstock-Confidence: a number from 0 to 1; none means confident), the last one's answer
    stands. budget: the last (heaviest) variant whose expected latency fits in the request's
    remaining latency budget minus reserveMs, else the first; needs spec.latencyBudgetMs.
    weighted: a random split by the variants' weight, e.g. for an A/B test."""
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    """cascade: an answer whose confidence is lower escalates to the next variant. Default 0.5."""
    reserve_ms: int = Field(default=0, ge=0, le=3_600_000)
    """budget: the part of the remaining budget kept for the stages after this one. Default 0."""


class Stage(ApiModel):
    """One step of the pipeline: a container serving POST / with JSON in and out."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!has(self.dependsOn) || !self.dependsOn.exists(d, d == self.name)",
                "a stage cannot depend on itself",
            ),
            (
                "!has(self.batching) || !has(self.stream) || !self.stream",
                "a streaming stage cannot be batched",
            ),
            (
                "!has(self.input) || self.input != 'stream' || (has(self.dependsOn)"
                " && size(self.dependsOn) == 1)",
                "a stage with input: stream has exactly one dependency, the stage streaming into it",
            ),
            (
                "!has(self.input) || self.input != 'stream' || (!has(self.batching)"
                " && (!has(self.cache) || !has(self.cache.enabled) || !self.cache.enabled))",
                "a stage with input: stream is neither cached nor batched (its input is passed on"
                " as it arrives)",
            ),
            (
                "!has(self.variants) || self.variants.all(v, self.variants.exists_one(w,"
                " w.name == v.name))",
                "variant names must be unique in the stage",
            ),
            (
                "!has(self.variants) || !has(self.input) || self.input != 'stream'",
                "a stage with input: stream has no variants (its streamed input cannot be sent"
                " twice)",
            ),
            (
                "!has(self.variantPolicy) || has(self.variants)",
                "variantPolicy needs variants",
            ),
            (
                "!has(self.variants) || !has(self.variantPolicy) || self.variantPolicy.type !="
                " 'weighted' || self.variants.exists(v, !has(v.weight) || v.weight > 0)",
                "variantPolicy weighted needs a variant with a weight above 0",
            ),
            (
                "!(self.name in ['router', 'input'])",
                "the stage names router and input are reserved (the router, the request envelope)",
            ),
        )
    )

    name: StageName
    """Stage name, a DNS-1123 label of at most 40 characters, unique in the pipeline."""
    image: str = Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Container image of the stage."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy. Default: Kubernetes' (Always for :latest, else IfNotPresent)."""
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=64
    )
    """Entrypoint override."""
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(default=None, max_length=64)
    """Arguments to the entrypoint."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the stage serves HTTP on. Default 8080."""
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    """Environment variables of the stage container."""
    resources: Resources | None = None
    """Compute resources of the stage container."""
    depends_on: list[Dns1123Label] | None = Field(default=None, max_length=MAX_STAGES - 1)
    """Stages whose outputs this stage receives: its input is {"input": <pipeline input>,
    "<dependency>": <its output>, ...}. A stage without dependencies receives the pipeline input."""
    model: Model | None = None
    """Model artifact preloaded by an init container into a shared volume."""
    cache: Cache | None = None
    """Response cache (Redis sidecar). Off unless cache.enabled is true."""
    batching: Batching | None = None
    """Dynamic batching of concurrent requests. Off when unset."""
    scaling: Scaling | None = None
    """Autoscaling bounds and targets. Default: 1 to 10 replicas at 70% utilization."""
    stream: bool = False
    """The stage streams its response (chunked or SSE); it is passed through as produced: to the
    client when it is the output, else to the dependant that takes it as input: stream."""
    input: Literal["envelope", "stream"] = "envelope"
    """envelope (default): the stage gets {"input": ..., "<dependency>": <its output>} once
    every dependency answered. stream: its one dependency (a stream: true stage) is passed to it
    as it is produced, as the request body (chunked HTTP, the upstream's bytes unchanged, its
    Content-Type kept); a slow reader slows the producer, a failed reader stops it."""
    cost: Cost | None = None
    """Cost attribution overrides."""
    variants: list[Variant] | None = Field(default=None, min_length=2, max_length=MAX_VARIANTS)
    """Two to four ways to serve the stage (e.g. a light and a heavy model), each its own
    Deployment, Service and HPA; variantPolicy says which one answers. Unset: one workload."""
    variant_policy: VariantPolicy | None = None
    """How a request picks a variant. Default: cascade with minConfidence 0.5."""
    timeout_seconds: int = Field(default=30, ge=1, le=3600)
    """Longest time one request to this stage may take, including up to 5 s (80% of this at
    most) in which the router retries a refused connection: the stage had no ready pod. Default
    30."""
    node_selector: dict[Annotated[str, Field(max_length=317, pattern=RESOURCE_NAME)], Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = Field(default=None, max_length=16)  # fmt: skip
    """Node labels the stage's pods must match, e.g. {nvidia.com/gpu.present: "true"}."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=16)
    """Taints the stage's pods tolerate."""

    @property
    def dependencies(self) -> list[str]:
        return list(self.depends_on or [])

    @property
    def scaling_or_default(self) -> Scaling:
        return self.scaling or Scaling()

    @property
    def cache_enabled(self) -> bool:
        return self.cache is not None and self.cache.enabled

    @property
    def policy(self) -> VariantPolicy:
        return self.variant_policy or VariantPolicy()

    def workloads(self) -> list[Workload]:
        """What runs for this stage: itself, or each of its variants."""
        if not self.variants:
            return [Workload(self, None)]
        return [Workload(self.as_variant(variant), variant.name) for variant in self.variants]

    def as_variant(self, variant: Variant) -> Stage:
        """The stage as this variant runs it: the variant's fields where it sets them."""
        update = {
            name: getattr(variant, name)
            for name in VARIANT_FIELDS
            if getattr(variant, name) is not None
        }
        return self.model_copy(update={**update, "variants": None, "variant_policy": None})


@dataclass(frozen=True)
class Workload:
    """One Deployment + Service + HPA: a stage, or one variant of it (stage: with its fields)."""

    stage: Stage
    variant: str | None

    @property
    def component(self) -> str:
        """Its name in object names and the component label: <stage> or <stage>-<variant>."""
        return self.stage.name if self.variant is None else f"{self.stage.name}-{self.variant}"


class Tracing(ApiModel):
    """Distributed tracing of requests through the pipeline (OpenTelemetry -> Jaeger)."""

    enabled: bool = False
    """Emit spans from the router and gateways. Default false."""
    sampling_ratio: float = Field(default=0.1, ge=0, le=1)
    """Fraction of requests traced, 0 to 1. Default 0.1."""


class RouterSpec(ApiModel):
    """The pipeline's entrypoint, which runs the stage DAG per request with maximum parallelism."""

    resources: Resources | None = None
    """Compute resources of the router. Default: requests 100m CPU, 128Mi memory."""
    scaling: Scaling | None = None
    """Autoscaling of the router. Default: 1 to 10 replicas at 70% CPU."""


class PipelineSpec(ApiModel):
    """A DAG of stages served as one pipeline."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
                "stage names must be unique",
            ),
            (
                "!has(self.output) || self.stages.exists(s, s.name == self.output)",
                "output must name a stage",
            ),
            (
                "self.stages.all(s, !has(s.dependsOn) || s.dependsOn.all(d, self.stages.exists(t, t.name == d)))",
                "every dependsOn entry must name a stage of this pipeline",
            ),
        )
    )

    cost_center: str = Field(default="unallocated", max_length=63, pattern=LABEL_VALUE)
    """Cost center; becomes the label penstock.dev/cost-center on every object. Default unallocated."""
    team: str = Field(default="unallocated", max_length=63, pattern=LABEL_VALUE)
    """Owning team; becomes the label penstock.dev/team on every object. Default unallocated."""
    latency_budget_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    """End-to-end latency objective in milliseconds, enforced by the router."""
    output: Dns1123Label | None = None
    """The stage whose result is the pipeline's answer. Default: the only stage nothing depends on."""
    tracing: Tracing | None = None
    """Tracing settings. Off by default."""
    router: RouterSpec | None = None
    """Router settings (resources, scaling)."""
    image_pull_secrets: list[Dns1123Label] | None = Field(default=None, max_length=8)
    """Names of Secrets used to pull the stage images."""
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    """The stages, in any order; dependsOn defines the graph."""

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)

    @property
    def graph(self) -> dict[str, list[str]]:
        """{stage: the stages it depends on}, for the queries of penstock.api.graph."""
        return {stage.name: stage.dependencies for stage in self.stages}

    @property
    def output_stage(self) -> str:
        """The stage whose result is the answer: spec.output, else the first sink."""
        return stage_graph.output_stage(self.graph, self.output)

    def needed_stages(self) -> frozenset[str]:
        """The stages the output transitively depends on, the output included, and the
        embedders their semantic caches call."""
        needed = stage_graph.needed(self.graph, self.output_stage)
        embedders = {
            stage.cache.semantic.embedder
            for stage in self.stages
            if stage.name in needed and stage.cache and stage.cache.semantic
        }
        return needed | embedders

    def workloads(self) -> list[Workload]:
        return [workload for stage in self.stages for workload in stage.workloads()]

    @property
    def cache_used(self) -> bool:
        return any(stage.cache_enabled for stage in self.stages)

    @property
    def tracing_enabled(self) -> bool:
        return self.tracing is not None and self.tracing.enabled
