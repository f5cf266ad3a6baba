"""The Pipeline spec: what a user declares. Field names follow DESIGN.md's sketch."""

from __future__ import annotations

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
# Stage names the data plane uses itself (dataplane/router/topology.py, render/router.py).
RESERVED_STAGE_NAMES = {
    "router": "'router' is reserved: the pipeline's router is named <pipeline>-router",
    "input": "'input' is reserved: a stage's request body has the key \"input\" for the"
    " pipeline input, next to its dependencies' outputs",
}


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

    @property
    def cache_used(self) -> bool:
        return any(stage.cache_enabled for stage in self.stages)

    @property
    def tracing_enabled(self) -> bool:
        return self.tracing is not None and self.tracing.enabled
