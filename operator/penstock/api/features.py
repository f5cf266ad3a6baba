"""What a stage may ask Penstock for: a preloaded model (with warmup), a cache, batching,
scaling bounds and a cost override."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, model_validator

from penstock.api.container import SecretKeySelector
from penstock.api.types import (
    DECIMAL,
    SHA256,
    ApiModel,
    Dns1123Label,
    Quantity,
    cel_rules,
)


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


class MemoryTier(ApiModel):
    """An in-process LRU in the stage's gateway, looked up before the pod's Redis: a hit never
    leaves the process. Filled by stores and by the pod tier's hits (for no longer than the
    entry has left there); the gateway container's memory request and limit grow by maxSize."""

    max_entries: int = Field(default=1024, ge=1, le=1_000_000)
    """Most entries held; the least recently used goes first. Default 1024."""
    max_size: Quantity = "64Mi"
    """Most bytes held (bodies, content types and keys), at least 1Mi, at most 4Gi. Default 64Mi."""


MANAGED_REDIS_COMPONENT = "cache"
"""The managed Redis' component and name suffix (<pipeline>-cache): no stage may be named so
while the Pipeline has one."""


class ManagedRedis(ApiModel):
    """A Redis the operator runs for the Pipeline (one Deployment and Service,
    <pipeline>-shared-cache, its password the Pipeline's cache Secret): every stage whose shared
    tier is managed uses it."""

    max_memory: Quantity = "256Mi"
    """This stage's share of the Redis' maxmemory (the Redis holds the sum of its stages'), at
    least 1Mi. Default 256Mi."""


class SharedTier(ApiModel):
    """A Redis (or Valkey) endpoint every replica of the stage shares, looked up after the pod's
    own Redis: N replicas keep one cache instead of N, and a new replica starts warm. Entries
    are signed with the Pipeline's own key (from its cache Secret): another Pipeline pointed at
    the same Redis can neither serve them nor plant answers in this one's. Identical misses on
    different replicas make one stage call: the first takes a lease (SET NX with a 2 s expiry it
    renews), the others wait for its notice and read its answer; a dead holder's lease expires
    and a waiter calls instead. Memcached works too, without the leases (no SET NX notices)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!has(self.url) || !self.url.startsWith('memcached://')"
                " || !has(self.passwordSecret)",
                "passwordSecret is for Redis: memcached:// takes no password",
            ),
            ("has(self.url) != has(self.managed)", "set exactly one of url and managed"),
            (
                "!has(self.cluster) || !self.cluster"
                " || (has(self.url) && self.url.startsWith('redis') && !self.url.matches('/0*[1-9]'))",
                "cluster needs a redis:// or rediss:// url of database 0",
            ),
            (
                "!has(self.managed) || !has(self.passwordSecret)",
                "passwordSecret is for url: a managed Redis has the Pipeline's own password",
            ),
        )
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^(rediss?://[^\s/@:]+(:[0-9]+)?(/[0-9]+)?|memcached://[^\s/@:]+(:[0-9]+)?)$",
    )
    """redis://HOST[:PORT][/DB], rediss:// for TLS (verified against the system CAs), or
    memcached://HOST[:PORT] (no leases there: identical misses coalesce per replica). No user
    or password in the URL: use passwordSecret (Redis only)."""
    password_secret: SecretKeySelector | None = None
    """The key of a Secret in the Pipeline's namespace holding the Redis password."""
    managed: ManagedRedis | None = None
    """Instead of url: a Redis the operator runs for this Pipeline, for users without one."""
    cluster: bool = False
    """url is one node of a Redis Cluster (database 0): the gateways find the other nodes and
    send each key to its slot's node; leases and their notices work across the nodes. Default
    false."""

    @model_validator(mode="after")
    def _one_endpoint(self) -> SharedTier:
        if (self.url is None) == (self.managed is None):
            raise ValueError("set exactly one of url and managed")
        if self.password_secret is not None and self.managed is not None:
            raise ValueError(
                "passwordSecret is for url: a managed Redis has the Pipeline's own password"
            )
        if self.url and self.url.startswith("memcached://") and self.password_secret is not None:
            raise ValueError("passwordSecret is for Redis: memcached:// takes no password")
        if self.cluster and (
            not self.url or not self.url.startswith("redis") or re.search("/0*[1-9]", self.url)
        ):
            raise ValueError("cluster needs a redis:// or rediss:// url of database 0")
        return self


class DiskTier(ApiModel):
    """Files on a PersistentVolumeClaim the operator creates for the stage, looked up after the
    other tiers: for large or expensive answers such as embedding vectors, kept across pod
    restarts and rollouts. Each file holds its key, expiry and answer under a sha256 (a damaged
    one is never served); past 90% of size the least recently read go first. The replicas of a
    stage mount the same claim: more than one replica on more than one node needs
    accessMode: ReadWriteMany from the storage class. A change of size, storageClassName or
    accessMode is a new, empty claim (the old one is deleted once no pod uses it)."""

    size: Quantity = "1Gi"
    """The claim's storage request, at least 16Mi, at most 16Ti; the tier holds 90% of it.
    Default 1Gi."""
    max_entry_size: Quantity = "16Mi"
    """Answers larger than this are not stored on disk, at most size. Default 16Mi."""
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    """The claim's StorageClass; unset: the cluster's default."""
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteOnce"
    """The claim's access mode. Default ReadWriteOnce (the replicas share one node's volume)."""


FIELD_PATH = r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$"
FieldPath = Annotated[str, Field(max_length=256, pattern=FIELD_PATH)]


class SemanticTier(ApiModel):
    """After an exact miss, answer with the stored answer of a similar earlier input.

    The request's text is embedded by ``embedder``, one of this Pipeline's stages; a stored
    input answers only when the numbers, identifiers and names, negations and words whose
    opposite is another question (before/after, on/off, ...) are the same in both, and so is
    every other part of the body but ``ignoreFields`` (for a chat, ``messages``, every message
    before the last); then
    its cosine must be at least ``threshold``, or ``oneSlotThreshold`` when the text is the
    stored one with a single place reworded. On Penstock's labelled set (``penstock cache
    eval``) the defaults serve 58% of held-out paraphrases and answer 0 of 87 look-alike traps.
    The index lives in each gateway (``maxEntries`` inputs), and with a disk tier also on it,
    read back at start; the answers are the tiers'."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!has(self.oneSlotThreshold) || !has(self.threshold)"
                " || self.oneSlotThreshold >= self.threshold",
                "oneSlotThreshold must be at least threshold",
            ),
        )
    )

    embedder: Dns1123Label
    """The stage that embeds a text: POST {"text": ...} answers {"embedding": [numbers]}. It
    must have no dependsOn (it is called with the text alone) and no semantic cache itself."""
    threshold: float = Field(default=0.75, ge=0.5, le=1)
    """Least cosine similarity of a semantic hit. Default 0.75."""
    one_slot_threshold: float = Field(default=0.9, ge=0.5, le=1)
    """Least cosine when the text is a stored one with one run of words replaced, added or
    removed ("savings account" -> "checking account"). Default 0.9."""
    text_field: FieldPath = "text"
    """Dotted path of the body's text. Default text; a body with messages compares the last
    message's content and requires the messages before it to be equal."""
    ignore_fields: list[FieldPath] | None = Field(default=None, max_length=16)
    """Dotted paths of body fields that may differ for a semantic hit (request ids, timestamps).
    Every other field must be equal. Default none."""
    max_entries: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most inputs each gateway's index holds; the least recently used goes first. Default
    10000."""
    verify_fraction: float = Field(default=0.05, ge=0, le=1)
    """Share of semantic hits also asked of the stage after answering; a different answer is
    counted as a false hit and its input leaves the index. Default 0.05."""


class Cache(ApiModel):
    """Exact-match response cache: a Redis sidecar inside each stage pod (the ``pod`` tier); with
    ``memory`` an in-process tier in the gateway before it, with ``shared`` one every replica
    shares and with ``disk`` files on a volume after it."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!has(self.memory) || (has(self.enabled) && self.enabled)",
                "memory needs enabled: true (the tiers are the stage's cache)",
            ),
            (
                "!has(self.shared) || (has(self.enabled) && self.enabled)",
                "shared needs enabled: true (the tiers are the stage's cache)",
            ),
            (
                "!has(self.disk) || (has(self.enabled) && self.enabled)",
                "disk needs enabled: true (the tiers are the stage's cache)",
            ),
            (
                "!has(self.semantic) || (has(self.enabled) && self.enabled)",
                "semantic needs enabled: true (its answers are the tiers' entries)",
            ),
        )
    )

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
    memory: MemoryTier | None = None
    """The in-process tier in front of the Redis sidecar; unset: none."""
    shared: SharedTier | None = None
    """A Redis (or Memcached) every replica shares, after the Redis sidecar; on Redis, identical
    misses on different replicas make one stage call (a lease in it). Unset: none."""
    generation: int = Field(default=0, ge=0, le=2**31 - 1)
    """Part of every entry's key: raising it purges the stage's cache in every tier (``penstock
    cache purge`` adds one). The pods roll, so the memory and pod tiers start empty, and the new
    pods never read an older generation's entries in the shared or disk tiers. Only ever raise
    it: going back makes the older entries reachable again while their TTL lasts. Default 0."""
    disk: DiskTier | None = None
    """Files on a volume of the stage's own, after the other tiers, kept across restarts;
    unset: none."""
    semantic: SemanticTier | None = None
    """Answers for similar inputs after an exact miss; unset: none."""

    @model_validator(mode="after")
    def _unique_key_headers(self) -> Cache:
        names = self.key_headers or []
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"keyHeaders lists {', '.join(map(repr, repeated))} more than once")
        return self


class Pack(ApiModel):
    """Prompt packing: a batch becomes ONE call of the stage's POST / with the prompts numbered
    in one prompt; the answer is split back per caller."""

    prompt_field: str = Field(default="prompt", min_length=1, max_length=128)
    """Field of the request body holding the prompt. Default prompt."""
    answer_field: str = Field(default="text", min_length=1, max_length=128)
    """Field of the stage's JSON answer holding the generated text. Default text."""
    template: str = Field(
        default=(
            "Answer each of the {count} numbered requests below on its own. Reply with a JSON"
            " array of {count} strings, the answers in order, and nothing else.\n\n{items}"
        ),
        max_length=4096,
        pattern=r"\{items\}",
    )
    """The packed prompt: {items} becomes the numbered prompts, {count} their number. The answer
    is read as a JSON array anywhere in the text, else as a numbered list."""
    item_template: str = Field(default="{number}. {prompt}", max_length=1024, pattern=r"\{prompt\}")
    """One item of {items}: {number} (from 1) and {prompt}. Default "{number}. {prompt}"."""
    max_prompt_bytes: int = Field(default=16384, ge=64, le=1 << 20)
    """Largest packed prompt in bytes; the items beyond it go alone. Default 16384."""


class Batching(ApiModel):
    """Dynamic batching: the gateway groups concurrent requests into one call of the batch path."""

    max_batch_size: int = Field(ge=1, le=4096)
    """Largest number of requests in one batch."""
    max_latency_ms: int = Field(default=10, ge=0, le=60000)
    """Longest time the first request of a batch waits for others. Default 10."""
    path: str = Field(default="/batch", max_length=256, pattern=r"^/")
    """Stage path taking a JSON array of inputs and returning an array of outputs. Default /batch.
    Not used with pack. With the cache enabled, a caller's own array sent to this path is cached
    item by item: each item is looked up as a POST / of it, only the distinct misses go to the
    stage (batched), and the answers come back in order (X-Penstock-Cache-Items: hits/items)."""
    pack: Pack | None = None
    """Prompt packing for LLM stages: the batch is one prompt to POST / (maxBatchSize items at
    most); items whose part of the answer is missing or does not parse are sent alone."""


class Scaling(ApiModel):
    """Replica bounds and targets; the operator renders a HorizontalPodAutoscaler from them."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
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
