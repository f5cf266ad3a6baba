"""The PipelineRun API: a dataset pushed through a Pipeline as a Kubernetes Job (penstock batch
in an Indexed Job, one shard per completion index)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from penstock.api.metadata import DNS1035_LABEL
from penstock.api.status import Condition, StatusModel
from penstock.api.types import ApiModel, Dns1123Label

RUN_KIND = "PipelineRun"
RUN_PLURAL = "pipelineruns"
# Where the items come from and the records go: object stores and HTTP, never the pod's disk.
_REMOTE = r"^(s3|https?)://[^\s]+$"


class PipelineRunSpec(ApiModel):
    """Every JSON line of `input` through the router of `pipeline`, records to `output`."""

    pipeline: str = Field(max_length=63, pattern=DNS1035_LABEL)
    """The Pipeline in this namespace whose router the items go through."""
    input: str = Field(max_length=2048, pattern=_REMOTE)
    """JSON lines, one item each: s3://BUCKET/KEY or an http(s) URL."""
    output: str = Field(max_length=2048, pattern=_REMOTE)
    """Where each shard's records go once it is done: s3://BUCKET/PREFIX/ or an http(s) URL
    prefix that accepts PUT, each shard as part-<index>-of-<parallelism>.jsonl (a prefix ends
    with /; without, the name is appended after a -)."""
    parallelism: int = Field(default=1, ge=1, le=64)
    """Shards run at once: shard k takes the input lines whose index modulo parallelism is k."""
    deadline_seconds: int | None = Field(default=None, ge=60, le=604_800)
    """The Job's activeDeadlineSeconds: every shard stops when it runs out."""
    id_field: str | None = Field(default=None, min_length=1, max_length=253)
    """Copy this field of each input object to its record."""
    max_concurrency: int = Field(default=64, ge=1, le=1024)
    """The concurrency controller's bound per shard."""
    retries: int = Field(default=3, ge=0, le=20)
    """Retries of a 502/504 or a lost call per item (shed 429/503 answers are waited out)."""
    credentials_secret: Dns1123Label | None = None
    """Secret whose keys become environment variables of the shards (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)."""


RunPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class PipelineRunStatus(StatusModel):
    """Observed state of a PipelineRun."""

    observed_generation: int | None = None
    """The .metadata.generation last reconciled."""
    phase: RunPhase | None = None
    """Pending, Running, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Valid, Complete, Failed."""
    job_name: str | None = Field(default=None, max_length=63)
    """The Job that runs the shards."""
    shards: str | None = Field(default=None, max_length=16)
    """Shards done over all shards, e.g. 3/4."""
    items_done: int | None = Field(default=None, ge=0)
    """Input lines with a record, over the shards that finished."""
    items_failed: int | None = Field(default=None, ge=0)
    """Records that hold an error (the item's line or answer)."""
    items_per_hour: float | None = Field(default=None, ge=0)
    """Items done per hour of the run's wall time."""
    cost_per_1000_items: str | None = Field(default=None, max_length=32)
    """The Pipeline's hourly cost over the run's wall time per 1,000 items, USD."""
    start_time: str | None = Field(default=None, max_length=64)
    """When the Job started."""
    completion_time: str | None = Field(default=None, max_length=64)
    """When the Job finished."""
