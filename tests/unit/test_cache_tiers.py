"""The in-process cache tier and the tier chain (dataplane/gateway/tiers.py): bounds, LRU order,
TTL never renewed by a hit, Vary honoured, fills bounded by the source's TTL, fail-open order."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from penstock.api.validation import validate_spec
from penstock.dataplane.gateway.cache import (
    Entry,
    Found,
    Lookup,
    Store,
    encode_entry,
    sign,
    signing_key,
    unsign,
)
from penstock.dataplane.gateway.tiers import MemoryCache, Tiers
from penstock.render import PipelineRef, RenderSettings, render_children
from penstock.render.cache import disk_claims
from penstock.render.gateway import gateway_container


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def memory(clock: Clock, entries: int = 10, size: int = 10_000, ttl: int = 60) -> MemoryCache:
    return MemoryCache(
        max_entries=entries, max_bytes=size, ttl_seconds=ttl, max_entry_bytes=1000, clock=clock
    )


def entry(text: str) -> Entry:
    return Entry(200, "application/json", text.encode())


async def test_a_hit_does_not_renew_the_ttl() -> None:
    clock = Clock()
    cache = memory(clock, ttl=10)
    await cache.put("k", entry('"a"'))
    clock.now += 6
    assert (await cache.lookup("k")).lookup is Lookup.HIT
    clock.now += 5  # 11 s after the store: gone, although it was read at 6 s
    assert (await cache.lookup("k")).lookup is Lookup.MISS
    assert len(cache) == 0 and cache.bytes == 0


async def test_the_least_recently_used_goes_first_within_count_and_bytes() -> None:
    clock = Clock()
    cache = memory(clock, entries=2)
    for key in ("a", "b"):
        await cache.put(key, entry('"x"'))
    await cache.lookup("a")  # b is now the least recently used
    await cache.put("c", entry('"x"'))
    assert [(await cache.lookup(k)).lookup for k in "abc"] == [Lookup.HIT, Lookup.MISS, Lookup.HIT]

    small = memory(clock, size=100)
    await small.put("one", entry("1" * 60))
    await small.put("two", entry("2" * 30))
    await small.put("three", entry("3" * 50))  # 60 + 30 + 50 > 100: the oldest goes
    assert (await small.lookup("one")).lookup is Lookup.MISS
    assert small.bytes <= 100


async def test_too_large_is_not_held() -> None:
    cache = memory(Clock())
    assert await cache.put("k", entry("x" * 2000)) is Store.TOO_LARGE
    assert (await cache.lookup("k")).lookup is Lookup.MISS


async def test_an_answer_that_varies_is_held_per_variant() -> None:
    cache = memory(Clock())
    english = {"accept-language": "en"}
    await cache.put("k", entry('"hello"'), vary=("accept-language",), headers=english)
    found = await cache.lookup("k", english)
    assert found.lookup is Lookup.HIT and found.entry == entry('"hello"')
    assert found.vary == ("accept-language",)
    assert (await cache.lookup("k", {"accept-language": "fr"})).lookup is Lookup.MISS
    assert (await cache.lookup("k", None)).lookup is Lookup.MISS


class Fake:
    """A later tier with a fixed answer, or broken."""

    def __init__(self, found: Found) -> None:
        self.name = "pod"
        self.last_error: str | None = None
        self.found = found
        self.asked_ttl: list[bool] = []
        self.stored: list[str] = []

    async def lookup(
        self, key: str, headers: Mapping[str, str] | None = None, with_ttl: bool = False
    ) -> Found:
        self.asked_ttl.append(with_ttl)
        return self.found

    async def put(
        self,
        key: str,
        entry: Entry,
        *,
        vary: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Store:
        self.stored.append(key)
        return Store.STORED

    async def close(self) -> None:
        pass


async def test_a_later_hit_fills_the_earlier_tier_for_no_longer_than_it_has_left() -> None:
    clock = Clock()
    front = memory(clock, ttl=3600)
    pod = Fake(Found(Lookup.HIT, entry('"from redis"'), (), ttl_seconds=7.9))
    tiers = Tiers([front, pod])
    seen: list[tuple[str, str]] = []
    filled: list[tuple[str, str]] = []
    hit = await tiers.get("k", {}, lambda t, r: seen.append((t, r)))
    assert (hit.lookup, hit.tier) == (Lookup.HIT, "pod") and hit.entry == entry('"from redis"')
    assert seen == [("memory", "miss"), ("pod", "hit")] and pod.asked_ttl == [True]
    # The fill is the caller's to run after answering: nothing is copied before that.
    assert hit.fill is not None and len(front) == 0
    await hit.fill(lambda t, r: filled.append((t, r)))
    assert filled == [("memory", "stored")]
    again = await tiers.get("k", {})
    assert (again.lookup, again.tier, again.fill) == (Lookup.HIT, "memory", None)
    clock.now += 8  # past the 7 whole seconds the Redis entry had left
    assert (await front.lookup("k")).lookup is Lookup.MISS


@pytest.mark.parametrize(
    ("later", "expected"), [(Lookup.ERROR, Lookup.MISS), (Lookup.MISS, Lookup.MISS)]
)
async def test_a_broken_later_tier_is_a_miss_while_another_tier_answers(
    later: Lookup, expected: Lookup
) -> None:
    tiers = Tiers([memory(Clock()), Fake(Found(later))])
    assert (await tiers.get("k", {})).lookup is expected
    assert (await Tiers([Fake(Found(Lookup.ERROR))]).get("k", {})).lookup is Lookup.ERROR


async def test_a_store_goes_to_every_tier() -> None:
    front, pod = memory(Clock()), Fake(Found(Lookup.MISS))
    stores: list[tuple[str, str]] = []
    stored = await Tiers([front, pod]).put(
        "k", entry('"x"'), on_store=lambda t, r: stores.append((t, r))
    )
    assert stored is Store.STORED and pod.stored == ["k"]
    assert stores == [("memory", "stored"), ("pod", "stored")]


def test_the_memory_tier_reaches_the_gateway_and_its_memory_budget() -> None:
    spec = validate_spec(
        {
            "stages": [
                {
                    "name": "embed",
                    "image": "e:1",
                    "cache": {"enabled": True, "memory": {"maxEntries": 500, "maxSize": "32Mi"}},
                }
            ]
        }
    ).spec
    assert spec is not None
    container = gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PENSTOCK_GATEWAY_MEMORY_CACHE_MAX_ENTRIES"] == "500"
    assert env["PENSTOCK_GATEWAY_MEMORY_CACHE_MAX_BYTES"] == str(32 << 20)
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"memory": "288Mi"},
    }


@pytest.mark.parametrize("size", ["512Ki", "5Gi"])
def test_memory_tier_size_out_of_bounds_is_refused_naming_the_field(size: str) -> None:
    result = validate_spec(
        {
            "stages": [
                {
                    "name": "e",
                    "image": "e:1",
                    "cache": {"enabled": True, "memory": {"maxSize": size}},
                }
            ]
        }
    )
    assert not result.valid
    assert any(p.path == "spec.stages[0].cache.memory.maxSize" for p in result.errors), (
        result.errors
    )


def test_a_memory_tier_without_the_cache_enabled_is_refused() -> None:
    result = validate_spec(
        {"stages": [{"name": "e", "image": "e:1", "cache": {"memory": {"maxEntries": 10}}}]}
    )
    assert not result.valid
    assert [p.path for p in result.errors] == ["spec.stages[0].cache.memory"], result.errors


def shared_spec(shared: dict[str, object], enabled: bool = True) -> dict[str, object]:
    return {
        "stages": [
            {"name": "embed", "image": "e:1", "cache": {"enabled": enabled, "shared": shared}}
        ]
    }


def test_the_shared_tier_signs_with_the_pipelines_own_secret_not_the_users() -> None:
    shared = {
        "url": "rediss://cache.example:6380/1",
        "passwordSecret": {"name": "team-redis", "key": "password"},
    }
    spec = validate_spec(shared_spec(shared)).spec
    assert spec is not None
    env = {
        e["name"]: e
        for e in gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())["env"]
    }
    assert env["PENSTOCK_GATEWAY_SHARED_REDIS_URL"]["value"] == "rediss://cache.example:6380/1"
    key = env["SHARED_CACHE_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert key["name"] != "team-redis"
    assert env["SHARED_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-redis",
        "key": "password",
    }


@pytest.mark.parametrize(
    ("shared", "enabled", "field"),
    [
        ({"url": "redis://user:hunter2@cache:6379"}, True, "url"),
        ({"url": "http://cache:6379"}, True, "url"),
        ({"url": "redis://cache:6379/0"}, False, ""),
        ({"url": "memcached://cache:11211/0"}, True, "url"),
        ({"url": "memcached://user:pw@cache:11211"}, True, "url"),
        ({"url": "memcached://cache", "passwordSecret": {"name": "s", "key": "k"}}, True, ""),
        ({"url": "memcached://cache", "cluster": True}, True, ""),
        ({"url": "redis://cache:7000/3", "cluster": True}, True, ""),
        ({"url": "redis://cache:7000/03", "cluster": True}, True, ""),
        ({"managed": {}, "cluster": True}, True, ""),
        ({}, True, ""),
        ({"url": "redis://cache:6379", "managed": {}}, True, ""),
        ({"managed": {}, "passwordSecret": {"name": "s", "key": "k"}}, True, ""),
        ({"managed": {"maxMemory": "512Ki"}}, True, "managed.maxMemory"),
    ],
)
def test_a_bad_shared_tier_is_refused_naming_the_field(
    shared: dict[str, object], enabled: bool, field: str
) -> None:
    result = validate_spec(shared_spec(shared, enabled))
    assert not result.valid
    path = "spec.stages[0].cache.shared" + (f".{field}" if field else "")
    assert any(p.path == path for p in result.errors), result.errors


def test_a_memcached_shared_tier_reaches_the_gateway_without_a_password() -> None:
    spec = validate_spec(shared_spec({"url": "memcached://cache.example:11211"})).spec
    assert spec is not None
    env = {
        e["name"]: e
        for e in gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())["env"]
    }
    assert env["PENSTOCK_GATEWAY_SHARED_REDIS_URL"]["value"] == "memcached://cache.example:11211"
    assert "SHARED_REDIS_PASSWORD" not in env
    assert "SHARED_CACHE_KEY" in env


def test_signed_entries_are_served_only_under_their_own_key() -> None:
    mine, theirs = signing_key("pipeline-a-secret"), signing_key("pipeline-b-secret")
    envelope = encode_entry(entry('"answer"'))
    sealed = sign(mine, envelope)
    assert unsign(mine, sealed) == envelope
    assert unsign(theirs, sealed) is None  # another Pipeline's entry
    assert unsign(mine, envelope) is None  # planted unsigned
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert unsign(mine, tampered) is None


def disk_spec(disk: dict[str, object], enabled: bool = True) -> dict[str, object]:
    return {
        "stages": [{"name": "embed", "image": "e:1", "cache": {"enabled": enabled, "disk": disk}}]
    }


def test_the_disk_tier_is_a_claim_of_its_own_mounted_in_the_gateway() -> None:
    spec = validate_spec(disk_spec({"size": "10Gi", "maxEntrySize": "8Mi"})).spec
    assert spec is not None
    ref = PipelineRef("rag", "ns", "uid-1")
    (claim,) = disk_claims(ref, spec)
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "10Gi"}},
    }
    container = gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PENSTOCK_GATEWAY_DISK_CACHE_DIR"] == "/var/cache/penstock/entries"
    assert env["PENSTOCK_GATEWAY_DISK_CACHE_MAX_BYTES"] == str((10 << 30) * 9 // 10)
    assert env["PENSTOCK_GATEWAY_DISK_CACHE_MAX_ENTRY_BYTES"] == str(8 << 20)
    assert {"name": "disk-cache", "mountPath": "/var/cache/penstock"} in container["volumeMounts"]
    deployment = next(
        m for m in render_children(ref, spec, RenderSettings()) if m["kind"] == "Deployment"
    )
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "disk-cache",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    } in volumes


def test_what_a_bound_claim_cannot_change_names_a_new_claim() -> None:
    def name(disk: dict[str, object]) -> str:
        spec = validate_spec(disk_spec(disk)).spec
        assert spec is not None
        (claim,) = disk_claims(PipelineRef("rag", "ns", "uid-1"), spec)
        return str(claim["metadata"]["name"])

    base = name({"size": "1Gi"})
    assert name({"size": "1024Mi"}) == base  # the same size, written differently
    assert name({"size": "1Gi", "maxEntrySize": "1Mi"}) == base  # the gateway's, not the claim's
    others = {
        name({"size": "2Gi"}),
        name({"size": "1Gi", "storageClassName": "fast"}),
        name({"size": "1Gi", "accessMode": "ReadWriteMany"}),
    }
    assert base not in others and len(others) == 3


def test_without_a_disk_tier_there_is_no_claim() -> None:
    spec = validate_spec(disk_spec({"size": "1Gi"})).spec
    assert spec is not None
    assert len(disk_claims(PipelineRef("rag", "ns", "u"), spec)) == 1
    plain = validate_spec({"stages": [{"name": "e", "image": "e:1", "cache": {"enabled": True}}]})
    assert plain.spec is not None
    assert disk_claims(PipelineRef("rag", "ns", "u"), plain.spec) == []


@pytest.mark.parametrize(
    ("disk", "enabled", "field"),
    [
        ({"size": "1Gi"}, False, ""),
        ({"size": "1Mi"}, True, "size"),
        ({"size": "1Gi", "maxEntrySize": "2Gi"}, True, "maxEntrySize"),
        ({"size": "1Gi", "maxEntrySize": 0}, True, "maxEntrySize"),
        ({"size": "1Gi", "storageClassName": "Fast_SSD"}, True, "storageClassName"),
        ({"size": "1Gi", "accessMode": "ReadOnlyMany"}, True, "accessMode"),
    ],
)
def test_a_bad_disk_tier_is_refused_naming_the_field(
    disk: dict[str, object], enabled: bool, field: str
) -> None:
    result = validate_spec(disk_spec(disk, enabled))
    assert not result.valid
    path = "spec.stages[0].cache.disk" + (f".{field}" if field else "")
    assert any(p.path == path for p in result.errors), result.errors


def test_a_managed_shared_tier_is_one_redis_for_the_pipeline_with_its_own_password() -> None:
    managed = {"managed": {"maxMemory": "64Mi"}}
    doc = {
        "stages": [
            {"name": "a", "image": "e:1", "cache": {"enabled": True, "shared": managed}},
            {"name": "b", "image": "e:1", "cache": {"enabled": True, "shared": managed}},
        ],
        "output": "b",
    }
    spec = validate_spec(doc).spec
    assert spec is not None
    ref = PipelineRef("rag", "ns", "uid-1")
    children = {
        (m["kind"], m["metadata"]["name"]): m for m in render_children(ref, spec, RenderSettings())
    }
    redis = children[("Deployment", "rag-cache")]["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--maxmemory") + 1] == str(128 << 20)  # the sum of the shares
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "rag-cache"
    assert ("Service", "rag-cache") in children
    env = {
        e["name"]: e
        for e in gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())["env"]
    }
    assert env["PENSTOCK_GATEWAY_SHARED_REDIS_URL"]["value"] == "redis://rag-cache.ns.svc:6379/0"
    assert env["SHARED_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "rag-cache"
    plain = validate_spec({"stages": [{"name": "a", "image": "e:1", "cache": {"enabled": True}}]})
    assert plain.spec is not None
    kinds = {
        (m["kind"], m["metadata"]["name"])
        for m in render_children(ref, plain.spec, RenderSettings())
    }
    assert ("Deployment", "rag-cache") not in kinds


def test_a_stage_named_like_the_managed_redis_is_refused() -> None:
    doc = {
        "stages": [
            {"name": "cache", "image": "e:1"},
            {"name": "b", "image": "e:1", "cache": {"enabled": True, "shared": {"managed": {}}}},
        ],
        "output": "b",
    }
    result = validate_spec(doc)
    assert [p.path for p in result.errors] == ["spec.stages[0].name"], result.errors
    assert "rename the stage" in result.errors[0].message


def test_a_cluster_shared_tier_tells_the_gateway() -> None:
    spec = validate_spec(shared_spec({"url": "redis://node-0.cache:7000", "cluster": True})).spec
    assert spec is not None
    env = {
        e["name"]: e.get("value")
        for e in gateway_container("rag", "ns", spec, spec.stages[0], RenderSettings())["env"]
    }
    assert env["PENSTOCK_GATEWAY_SHARED_REDIS_URL"] == "redis://node-0.cache:7000"
    assert env["PENSTOCK_GATEWAY_SHARED_REDIS_CLUSTER"] == "true"
