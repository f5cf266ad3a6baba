"""The Pipeline spec: what a user declares. Field names follow DESIGN.md's sketch."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, model_validator

from penstock.api import graph as stage_graph
from penstock.api.metadata import qualified_name_problem
from penstock.api.types import (
    DECIMAL,
    LABEL_VALUE,
    SHA256,
    ApiModel,
    Dns1123Label,
    Quantity,
    StageName,
)

MAX_STAGES = 32
# Stage names the data plane uses itself (dataplane/router/topology.py, render/router.py).
RESERVED_STAGE_NAMES = {
    "router": "'router' is reserved: the pipeline's router is named <pipeline>-router",
    "input": "'input' is reserved: a stage's request body has the key \"input\" for the"
    " pipeline input, next to its dependencies' outputs",
}


def _cel(*rules: tuple[str, str]) -> dict[str, JsonValue]:
    """CEL rules the apiserver checks (x-kubernetes-validations); validation.py checks them too."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


# A key of a Secret or ConfigMap (the apiserver checks references against it).
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
# A qualified name, as Kubernetes resource names and label keys are: cpu, hugepages-2Mi,
# nvidia.com/gpu, kubernetes.io/arch.
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
ResourceName = Annotated[str, Field(max_length=317, pattern=RESOURCE_NAME)]


class SecretKeySelector(ApiModel):
    """A key of a Secret in the Pipeline's namespace."""

    name: Dns1123Label
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY)
    """Key within the Secret."""
    optional: bool | None = None
    """When true the variable is left unset if the Secret or key is missing."""


class ConfigMapKeySelector(ApiModel):
    """A key of a ConfigMap in the Pipeline's namespace."""

    name: Dns1123Label
    """Name of the ConfigMap."""
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY)
    """Key within the ConfigMap."""
    optional: bool | None = None
    """When true the variable is left unset if the ConfigMap or key is missing."""


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from; set exactly one field."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "[has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1",
                "set exactly one of secretKeyRef, configMapKeyRef",
            )
        )
    )

    secret_key_ref: SecretKeySelector | None = None
    """Take the value from a key of a Secret."""
    config_map_key_ref: ConfigMapKeySelector | None = None
    """Take the value from a key of a ConfigMap."""

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable for the stage container."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both")
        )
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value. Mutually exclusive with valueFrom."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key. Mutually exclusive with value."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name!r}: set value or valueFrom, not both")
        return self


class Resources(ApiModel):
    """Compute resources of the stage container (Kubernetes quantities)."""

    requests: dict[ResourceName, Quantity] | None = Field(default=None, max_length=8)
    """Minimum resources, e.g. {cpu: 500m, memory: 1Gi, nvidia.com/gpu: 1}. Used by the
    scheduler and by cost attribution. Default: {cpu: 100m, memory: 128Mi}."""
    limits: dict[ResourceName, Quantity] | None = Field(default=None, max_length=8)
    """Maximum resources. No limit when unset."""


class Warmup(ApiModel):
    """Requests the gateway sends before the stage is marked ready, so the model is in memory."""

    requests: int = Field(default=0, ge=0, le=1000)
    """Number of warmup requests. Default 0 (no warmup)."""
    body: JsonValue = None
    """JSON body of each warmup request. Default: the JSON value null."""
    path: str = Field(default="/", max_length=256, pattern=r"^/")
    """HTTP path of the warmup requests. Default "/"."""

    def body_document(self) -> str:
        """The body file the gateway sends, the same in a cluster and under ``penstock dev``."""
        return json.dumps(self.body, sort_keys=True)


class Model(ApiModel):
    """A model artifact fetched and verified by an init container before the stage starts."""

    uri: str = Field(max_length=2048, pattern=r"^(file|https?|s3)://.+")
    """Where the artifact is: file://, http://, https:// or s3:// . A tar archive is unpacked."""
    sha256: str | None = Field(default=None, pattern=SHA256, max_length=64)
    """Expected SHA-256 of the artifact, 64 lowercase hex digits. Strongly recommended: a
    mismatch fails the init container and the stage never serves a wrong model."""
    mount_path: str = Field(default="/models", max_length=256, pattern=r"^/[^:]*$")
    """Where the stage container sees the model directory. Default /models."""
    size_limit: Quantity | None = None
    """Size limit of the model volume (emptyDir). Default 10Gi."""
    credentials_secret: Dns1123Label | None = None
    """Secret whose keys become environment variables of the preload container
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL ...)."""
    warmup: Warmup | None = None
    """Warmup requests sent after the model loads and before traffic is admitted."""


EvictionPolicy = Literal[
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    "noeviction",
]


# An HTTP field name (RFC 9110 token), in lower case.
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9a-z-]+$"
_HEADER_NAME_RE = re.compile(HEADER_NAME)
# Hop-by-hop fields (RFC 9110 7.6.1, and the legacy ones proxies still meet): the gateway
# never passes them to the stage. Here because the API's keyHeaders check needs them too.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not passed to the stage as sent, so they cannot change its answer.
_NOT_KEYABLE = HOP_BY_HOP_HEADERS | {"content-length", "expect", "host"}
MAX_KEY_HEADERS = 16


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME_RE.match(value):
        hint = f" (use {value.lower()!r})" if _HEADER_NAME_RE.match(value.lower()) else ""
        raise ValueError(
            f"{value!r} is not a lower-case HTTP header name (letters, digits and"
            f" !#$%&'*+.^_`|~-){hint}"
        )
    if value in _NOT_KEYABLE:
        raise ValueError(f"{value!r} is not passed to the stage, so it cannot change the answer")
    return value


# The pattern goes into the CRD only; pydantic runs _check_header_name, whose message is friendlier.
HeaderName = Annotated[
    str,
    Field(min_length=1, max_length=64, json_schema_extra={"pattern": HEADER_NAME}),
    AfterValidator(_check_header_name),
]


class Cache(ApiModel):
    """Exact-match response cache in a Redis sidecar inside each stage pod."""

    enabled: bool = False
    """Run the Redis sidecar and cache successful responses. Default false."""
    ttl_seconds: int = Field(default=3600, ge=1, le=30 * 24 * 3600)
    """How long a cached response is served. Default 3600."""
    max_memory: Quantity = "256Mi"
    """Redis maxmemory; also the sidecar's memory request and limit. Default 256Mi."""
    eviction_policy: EvictionPolicy = "allkeys-lru"
    """Redis maxmemory-policy applied when the cache is full. Default allkeys-lru."""
    max_entry_size: Quantity = "1Mi"
    """Responses larger than this are not cached. Default 1Mi."""
    key_headers: list[HeaderName] | None = Field(default=None, max_length=MAX_KEY_HEADERS)
    """Request headers whose values are part of the cache key (lower-case names, at most 16),
    in addition to those the stage's answer names in Vary. Default [accept, authorization];
    [] keys on none. A request carrying Authorization or Cookie that neither this list nor the
    answer's Vary covers gets an answer stored or shared with other callers only when the
    stage marks it Cache-Control: public (or s-maxage)."""

    @model_validator(mode="after")
    def _unique_key_headers(self) -> Cache:
        names = self.key_headers or []
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"keyHeaders lists {', '.join(map(repr, repeated))} more than once")
        return self


class Batching(ApiModel):
    """Dynamic batching: the gateway groups concurrent requests into one call of the batch path."""

    max_batch_size: int = Field(ge=1, le=4096)
    """Largest number of requests in one batch."""
    max_latency_ms: int = Field(default=10, ge=0, le=60000)
    """Longest time the first request of a batch waits for others. Default 10."""
    path: str = Field(default="/batch", max_length=256, pattern=r"^/")
    """Stage path taking a JSON array of inputs and returning an array of outputs. Default /batch."""


class Scaling(ApiModel):
    """Replica bounds and targets; the operator renders a HorizontalPodAutoscaler from them."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.maxReplicas) || (has(self.minReplicas) ? self.minReplicas : 1) <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
            )
        )
    )

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas. Default 1."""
    max_replicas: int | None = Field(default=None, ge=1, le=1000)
    """Most replicas. Default: the larger of minReplicas and 10."""
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    """Target fraction of CPU (and of measured per-replica capacity) in use. Default 0.7."""
    target_throughput_per_replica: float | None = Field(default=None, gt=0, le=1_000_000)
    """Requests per second one replica should serve. Used by the throughput tuner and, with a
    custom-metrics adapter, as an HPA Pods metric (penstock_stage_requests_per_second)."""

    @property
    def effective_max_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 10)


class Cost(ApiModel):
    """Cost attribution settings for a stage."""

    hourly_rate: str | None = Field(default=None, pattern=DECIMAL, max_length=20)
    """Price of one replica per hour in USD, as a decimal string ("2.50"). Overrides the
    operator's price table, e.g. for a GPU node."""


class Toleration(ApiModel):
    """Lets stage pods schedule onto nodes with matching taints (e.g. GPU nodes)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'",
                "an empty key needs operator Exists (it matches every taint)",
            ),
            (
                "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
                "operator Exists takes no value",
            ),
            (
                "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
                "tolerationSeconds needs effect NoExecute",
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=317, pattern=r"^([-a-z0-9.]+/)?[-A-Za-z0-9_.]*$"
    )
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal. Default Equal."""
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=86400 * 365)
    """For NoExecute: how long the pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        # The apiserver's rules for a pod's tolerations.
        if self.key and (why := qualified_name_problem(self.key)):
            raise ValueError(f"key {self.key!r}: {why}")
        if not self.key and self.operator != "Exists":
            raise ValueError("an empty key needs operator Exists (it matches every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class Stage(ApiModel):
    """One step of the pipeline: a container serving POST / with JSON in and out."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.dependsOn) || !self.dependsOn.exists(d, d == self.name)",
                "a stage cannot depend on itself",
            ),
            (
                "!has(self.batching) || !has(self.stream) || !self.stream",
                "a streaming stage cannot be batched",
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
    """The stage streams its response (chunked or SSE); it is passed through as produced."""
    cost: Cost | None = None
    """Cost attribution overrides."""
    timeout_seconds: int = Field(default=30, ge=1, le=3600)
    """Longest time one request to this stage may take. Default 30."""
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
        json_schema_extra=_cel(
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
        """The stages the output transitively depends on, the output included."""
        return stage_graph.needed(self.graph, self.output_stage)

    @property
    def cache_used(self) -> bool:
        return any(stage.cache_enabled for stage in self.stages)

    @property
    def tracing_enabled(self) -> bool:
        return self.tracing is not None and self.tracing.enabled
