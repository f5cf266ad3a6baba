"""A variant's gateway (--variant): its metrics carry a variant label, its cache keys are its own.

A stage without variants keeps the label set it always had (no empty variant label), so its
series and dashboards do not change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict

from penstock.dataplane.flags import HostPort
from penstock.dataplane.gateway.cache import Entry, Lookup, cache_key
from penstock.dataplane.gateway.config import GatewayConfig, parse_config
from penstock.dataplane.gateway.savings import Saving
from penstock.dataplane.gateway.server import Gateway
from penstock.dataplane.gateway.telemetry import GatewayMetrics
from penstock.dataplane.gateway.tiers import TierHit
from penstock.dataplane.http1 import Body, Request

BODY = b'{"question": "why"}'


def _config(variant: str | None) -> GatewayConfig:
    return GatewayConfig(
        listen=HostPort("127.0.0.1", 0),
        upstream="http://127.0.0.1:1",
        admin_listen=HostPort("127.0.0.1", 0),
        pipeline="qa",
        stage="answer",
        variant=variant,
        namespace="demo",
        cost_center="support",
        stage_image="answer:1",
    )


def _labels(variant: str | None) -> dict[str, list[dict[str, str]]]:
    """Family name -> the labels of its samples, after every kind of observation."""
    metrics = GatewayMetrics(_config(variant))
    metrics.request("ok")
    metrics.lookup("hit")
    metrics.store("stored")
    metrics.tier_lookup("memory", "hit")
    metrics.tier_fill("memory", "stored")
    metrics.lease("led")
    metrics.semantic("miss")
    metrics.verification("same")
    metrics.pack_fallback("missing")
    metrics.saved(Saving("cache", 0.1, 0.0001))
    metrics.tokens(10, 20)
    metrics.batch_size.observe(4)
    metrics.pack_items.observe(2)
    metrics.coalesced.inc()
    metrics.cost.inc(0.001)
    metrics.duration.observe(0.05)
    metrics.inflight.inc()
    metrics.ready.set(1)
    return {
        family.name: [dict(sample.labels) for sample in family.samples]
        for family in metrics.registry.collect()
    }


def test_a_variant_gateway_labels_every_series_with_its_variant() -> None:
    families = _labels("light")
    assert len(families) == 19
    for name, samples in families.items():
        assert samples, name
        for labels in samples:
            assert (labels["stage"], labels["variant"]) == ("answer", "light"), name


def test_a_stage_gateway_has_no_variant_label() -> None:
    plain, variant = _labels(None), _labels("light")
    assert set(plain) == set(variant)
    for name, samples in plain.items():
        assert samples, name
        assert all("variant" not in labels for labels in samples), name
        # The same series otherwise: only the variant label is added.
        without = [{k: v for k, v in labels.items() if k != "variant"} for labels in variant[name]]
        assert samples == without, name


def test_the_variant_flag_and_environment_variable_are_read() -> None:
    base = ["--listen", "127.0.0.1:1", "--upstream", "http://127.0.0.1:2", "--stage", "answer"]
    assert parse_config(base, environ={}).variant is None
    assert parse_config([*base, "--variant", "light"], environ={}).variant == "light"
    environ = {"PENSTOCK_GATEWAY_VARIANT": "heavy"}
    assert parse_config(base, environ=environ).variant == "heavy"


class RecordingTiers:
    """A cache that has every key: it records the keys it is asked for."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def get(self, key: str, headers: Mapping[str, str], on_lookup: Any = None) -> TierHit:
        self.keys.append(key)
        return TierHit(Lookup.HIT, Entry(200, "application/json", b'{"answer": 1}'), "memory")


async def _key_asked(variant: str | None) -> str:
    gateway = Gateway(_config(variant))
    tiers = RecordingTiers()
    gateway.cache = tiers  # type: ignore[assignment]
    gateway.ready = True
    body = Body(None)
    body.feed(BODY)
    headers = CIMultiDict({"Content-Type": "application/json", "Content-Length": str(len(BODY))})
    answer = await gateway._handle(Request(None, "POST", "/", headers, body=body))
    assert answer.status == 200  # from the cache: the stage (nothing listens) is not called
    [key] = tiers.keys
    return key


def _expected_key(stage: str) -> str:
    return cache_key(
        namespace="demo",
        pipeline="qa",
        stage=stage,
        stage_image="answer:1",
        model_version="",
        method="POST",
        path="/",
        body=json.loads(BODY),
        headers={},
        key_headers=("accept", "authorization"),  # the default: absent from the request
    )


@pytest.mark.parametrize(
    ("variant", "material"),
    [(None, "answer"), ("light", "answer/light"), ("heavy", "answer/heavy")],
)
async def test_a_variant_looks_up_keys_of_its_own(variant: str | None, material: str) -> None:
    assert await _key_asked(variant) == _expected_key(material)


async def test_the_stage_and_its_variants_never_share_a_cache_entry() -> None:
    keys = [await _key_asked(variant) for variant in (None, "light", "heavy")]
    assert len(set(keys)) == 3
