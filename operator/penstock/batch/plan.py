"""`penstock batch --plan`: measure each stage briefly, then the replicas that balance the
Pipeline for a target throughput, by the operator's tuner model (penstock.controller.tuner).

The probe sends sample items with `X-Penstock-Profile: 1`, so the router reports each stage's
time per item. A stage's capacity per replica is then 1 / its mean time (or its declared
scaling.targetThroughputPerReplica), and its replicas ceil(target / (capacity x
targetUtilization)) within its bounds: every stage keeps up with the same item rate, so no
fast stage waits on a slow one. Without a target, the target is the rate the slowest stage can
reach at its maxReplicas: the most the Pipeline can do within its bounds.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from statistics import fmean

import aiohttp

from penstock.api import PipelineSpec
from penstock.contract.profile import ProfileError, parse_profile
from penstock.contract.wire import PROFILE_HEADER
from penstock.controller.tuner import (
    Observation,
    PipelineGraph,
    StageInput,
    capacity_per_replica,
    replicas_for,
)
from penstock.errors import PenstockError


class PlanError(PenstockError):
    """The probe could not measure the Pipeline."""


@dataclass(frozen=True)
class StagePlan:
    name: str
    samples: int
    mean_ms: float
    capacity_per_replica: float
    replicas: int
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class Plan:
    target_rps: float
    stages: tuple[StagePlan, ...]
    probe_items: int

    @property
    def bottleneck(self) -> str:
        return min(self.stages, key=lambda s: s.capacity_per_replica * s.max_replicas).name

    def table(self) -> str:
        lines = [
            f"plan for {self.target_rps:.2f} items/s ({self.target_rps * 3600:,.0f} items/hour), "
            f"from {self.probe_items} probe items; bottleneck {self.bottleneck}",
            f"{'stage':<20} {'mean ms':>9} {'items/s/replica':>16} {'replicas':>9}  bounds",
        ]
        for stage in self.stages:
            lines.append(
                f"{stage.name:<20} {stage.mean_ms:>9.2f} {stage.capacity_per_replica:>16.2f} "
                f"{stage.replicas:>9}  {stage.min_replicas}..{stage.max_replicas}"
            )
        return "\n".join(lines)

    def document(self) -> dict[str, object]:
        return {
            "targetItemsPerSecond": round(self.target_rps, 3),
            "bottleneck": self.bottleneck,
            "stages": [
                {
                    "name": s.name,
                    "meanMs": round(s.mean_ms, 3),
                    "capacityPerReplica": round(s.capacity_per_replica, 3),
                    "replicas": s.replicas,
                }
                for s in self.stages
            ],
        }


async def probe(
    url: str, bodies: list[bytes], concurrency: int = 2, timeout_seconds: float = 120
) -> dict[str, list[float]]:
    """Each stage's times (ms) over the sample items; cache hits are not the stage's time."""
    times: dict[str, list[float]] = {}
    gate = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json", PROFILE_HEADER: "1"}

    async def one(session: aiohttp.ClientSession, body: bytes) -> None:
        async with gate, session.post(url, data=body, headers=headers) as response:
            raw = await response.read()
            if response.status != 200:
                text = raw[:300].decode("utf-8", "replace")
                raise PlanError(f"probe: the router answered {response.status}: {text}")
        try:
            profile = parse_profile(json.loads(raw), "the router's profile")
        except (ValueError, ProfileError) as error:
            raise PlanError(
                f"probe: no profile in the answer ({error}); a streamed output gives none: "
                "probe a Pipeline file (run with --no-stream) or a router whose output "
                "does not stream"
            ) from None
        for timing in profile.stages.values():
            if timing.cache != "hit":
                times.setdefault(timing.name, []).append(timing.duration_ms)

    client_timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        await asyncio.gather(*(one(session, body) for body in bodies))
    return times


def balance(
    times: dict[str, list[float]],
    spec: PipelineSpec | None,
    target_rps: float | None,
    probe_items: int,
) -> Plan:
    """The replicas per stage for the target rate (see the module docstring)."""
    known = {stage.name: stage for stage in PipelineGraph.from_spec(spec).stages} if spec else {}
    order = {name: position for position, name in enumerate(known)}
    rows = []
    for name, samples in sorted(times.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0])):
        stage = known.get(name, StageInput(name=name))
        mean_ms = fmean(samples)
        capacity = capacity_per_replica(stage, Observation(latency_seconds=mean_ms / 1000))
        if capacity is None:  # a stage that took no measurable time
            capacity = 1e6
        rows.append((stage, mean_ms, len(samples), capacity))
    if not rows:
        raise PlanError("probe: the profiles named no stage that ran (all cache hits?)")
    target = target_rps or min(
        capacity * stage.max_replicas * stage.target_utilization for stage, _, _, capacity in rows
    )
    plans = tuple(
        StagePlan(
            name=stage.name,
            samples=count,
            mean_ms=mean_ms,
            capacity_per_replica=capacity,
            replicas=replicas_for(target, capacity, stage),
            min_replicas=stage.min_replicas,
            max_replicas=stage.max_replicas,
        )
        for stage, mean_ms, count, capacity in rows
    )
    return Plan(target_rps=target, stages=plans, probe_items=probe_items)
