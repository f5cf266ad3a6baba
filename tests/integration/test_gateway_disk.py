"""The disk tier through real gateways on a real directory: answers kept across a gateway
restart, large answers the Redis tier refuses, checksummed files (a flipped byte, a torn write
or another key's file is never served), the TTL, a broken volume failing open, and the bound."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from penstock.dataplane.gateway.cache import Entry, Lookup, Store
from penstock.dataplane.gateway.config import ConfigError, parse_config
from penstock.dataplane.gateway.disk import DiskCache, entry_path
from tests.integration.test_gateway import Stage, client, running, sample, stage
from tests.integration.test_gateway_tiers import MEMORY, ask
from tests.support import RedisServer

pytestmark = [pytest.mark.integration]
__all__ = ["client", "stage"]  # fixtures
LOOKUPS = "penstock_stage_cache_tier_lookups_total"


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if not p.name.startswith("."))


async def test_an_answer_on_disk_outlives_the_gateway_and_fills_the_memory_tier(
    stage: Stage, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with running(stage, disk_cache_dir=str(tmp_path), **MEMORY) as first:
        assert await ask(client, first, {"q": "kept"}) == (200, "miss", None)
        await first.stored()
    assert len(entries(tmp_path)) == 1
    async with running(stage, disk_cache_dir=str(tmp_path), **MEMORY) as second:
        assert await ask(client, second, {"q": "kept"}) == (200, "hit", "disk")
        await second.stored()  # the fill of the memory tier runs after the answer
        assert await ask(client, second, {"q": "kept"}) == (200, "hit", "memory")
        assert sample(second, LOOKUPS, tier="disk", result="hit") == 1
    assert stage.calls["/"] == 1


async def test_an_answer_too_large_for_redis_is_served_from_disk(
    stage: Stage, tmp_path: Path, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    big = {"vector": "x" * (64 << 10)}
    options = {"redis_url": redis_server.url, "cache_max_entry_bytes": 32 << 10}
    async with running(stage, disk_cache_dir=str(tmp_path), **options) as gateway:
        assert await ask(client, gateway, big) == (200, "miss", None)
        await gateway.stored()
        assert redis_server.keys() == []  # larger than the pod tier takes
        assert await ask(client, gateway, big) == (200, "hit", "disk")
        stores = "penstock_stage_cache_tier_stores_total"
        # the store, then the fill after the disk hit: both too large for the pod tier
        assert sample(gateway, stores, tier="pod", result="too_large") == 2
        assert sample(gateway, stores, tier="disk", result="stored") == 1
    assert stage.calls["/"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "other-key"])
async def test_a_damaged_file_is_not_served_and_is_replaced(
    stage: Stage, tmp_path: Path, client: aiohttp.ClientSession, damage: str
) -> None:
    async with running(stage, disk_cache_dir=str(tmp_path)) as gateway:
        await ask(client, gateway, {"q": "a"})
        await gateway.stored()
        (a_file,) = entries(tmp_path)
        await ask(client, gateway, {"q": "b"})
        await gateway.stored()
        (b_file,) = set(entries(tmp_path)) - {a_file}
        data = bytearray(a_file.read_bytes())
        if damage == "flip":
            data[-3] ^= 0x20
            a_file.write_bytes(bytes(data))
        elif damage == "truncate":
            a_file.write_bytes(bytes(data[: len(data) // 2]))
        else:  # b's file under a's name: a well-formed entry, of another question
            os.replace(b_file, a_file)
        calls = stage.calls["/"]
        status, cache, tier = await ask(client, gateway, {"q": "a"})
        # The damaged file is a counted error, not an answer; the stage answers and the entry
        # is written anew.
        assert (status, tier) == (200, None) and cache in {"miss", "bypass"}
        assert sample(gateway, LOOKUPS, tier="disk", result="error") == 1
        assert stage.calls["/"] == calls + 1
        await gateway.stored()
        assert await ask(client, gateway, {"q": "a"}) == (200, "hit", "disk")
        expected_b = "miss" if damage == "other-key" else "hit"
        assert (await ask(client, gateway, {"q": "b"}))[1] == expected_b


async def test_a_disk_entry_dies_with_its_ttl(
    stage: Stage, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with running(stage, disk_cache_dir=str(tmp_path), cache_ttl_seconds=1) as gateway:
        await ask(client, gateway, {"q": "short"})
        await gateway.stored()
        assert await ask(client, gateway, {"q": "short"}) == (200, "hit", "disk")
        await asyncio.sleep(1.2)
        status, cache, _ = await ask(client, gateway, {"q": "short"})
        assert (status, cache) == (200, "miss")
    assert stage.calls["/"] == 2


async def test_a_broken_volume_fails_open_and_is_counted(
    stage: Stage, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    async with running(stage, disk_cache_dir=str(not_a_directory)) as gateway:
        for _ in range(3):
            status, cache, _ = await ask(client, gateway, {"q": 1})
            assert status == 200 and cache in {"miss", "bypass"}
        await gateway.stored()
        assert sample(gateway, LOOKUPS, tier="disk", result="error") >= 1
    assert stage.calls["/"] == 3


async def test_the_directory_is_bounded_and_the_least_recently_read_go_first(
    tmp_path: Path,
) -> None:
    disk = DiskCache(tmp_path, max_bytes=40_000, ttl_seconds=60, max_entry_bytes=1 << 20)
    body = b"v" * 4000
    for index in range(9):  # 9 entries of ~4.1 kB: under the bound
        assert await disk.put(f"key-{index}", Entry(200, "text/plain", body)) is Store.STORED
    await disk.sweep()
    assert disk.bytes is not None and disk.bytes < 40_000
    # key-0 was read most recently, key-1 least: the sweep goes by that recency.
    now = time.time()
    for index in range(9):
        os.utime(entry_path(tmp_path, f"key-{index}"), (now, now - 100 + index))
    os.utime(entry_path(tmp_path, "key-0"), (now, now))
    for index in range(9, 12):
        await disk.put(f"key-{index}", Entry(200, "text/plain", body))
    await disk.sweep()
    assert disk.bytes is not None and disk.bytes <= 40_000
    kept = {f"key-{i}" for i in range(12) if entry_path(tmp_path, f"key-{i}").exists()}
    assert "key-0" in kept and "key-1" not in kept and {"key-10", "key-11"} <= kept
    assert (await disk.lookup("key-0")).lookup is Lookup.HIT
    assert (await disk.lookup("key-1")).lookup is Lookup.MISS
    await disk.close()


async def test_a_stale_temporary_file_is_swept(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, max_bytes=1 << 20, ttl_seconds=60, max_entry_bytes=1 << 20)
    await disk.put("key", Entry(200, "text/plain", b"v"))
    torn = entry_path(tmp_path, "key").with_name(".torn.1.tmp")
    torn.write_bytes(b"PSD1 half")
    os.utime(torn, (time.time() - 120, time.time() - 120))
    await disk.sweep()
    assert not torn.exists() and entry_path(tmp_path, "key").exists()
    await disk.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["--disk-cache-max-bytes", "1000"],
        ["--disk-cache-dir", "/tmp/x", "--input-mode", "stream"],
    ],
)
def test_bad_disk_flags_are_config_errors(argv: list[str]) -> None:
    base = ["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1"]
    with pytest.raises(ConfigError, match="disk-cache"):
        parse_config(base + argv, {})


async def test_a_raised_generation_reads_none_of_the_older_entries_in_any_tier(
    stage: Stage, tmp_path: Path, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    tiers = {"redis_url": redis_server.url, "disk_cache_dir": str(tmp_path)}
    async with running(stage, **tiers) as before:
        await ask(client, before, {"q": "stale"})
        await before.stored()
        assert await ask(client, before, {"q": "stale"}) == (200, "hit", "pod")
    async with running(stage, cache_generation=1, **tiers) as after:
        assert await ask(client, after, {"q": "stale"}) == (200, "miss", None)
        await after.stored()
        assert await ask(client, after, {"q": "stale"}) == (200, "hit", "pod")
    assert stage.calls["/"] == 2
