"""The semantic tier through a real gateway, a real redis-server and the real MiniLM embed stage
(a process of its own): paraphrases are answered from the tiers, look-alike questions are not,
callers never get each other's answers, a failed embedder is a plain miss, and a verified
false hit leaves the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from penstock.dataplane.gateway.config import ConfigError, parse_config
from tests.harness import free_port
from tests.integration.test_gateway import Stage, client, running, sample, stage, url
from tests.support import RedisServer, ScriptServer, embed_stage

pytestmark = [pytest.mark.integration]
__all__ = ["client", "stage"]  # fixtures
LOOKUPS = "penstock_stage_semantic_lookups_total"


@pytest.fixture(scope="module")
def embedder() -> Iterator[ScriptServer]:
    server = embed_stage()
    yield server
    server.stop()


def semantic(embedder: ScriptServer, redis_server: RedisServer, **overrides: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_server.url,
        "semantic_embedder_url": embedder.url,
        "semantic_verify_fraction": 0.0,
        **overrides,
    }


async def ask(
    session: aiohttp.ClientSession, gateway: Any, body: Any, **headers: str
) -> tuple[str, str | None, Any]:
    """(X-Penstock-Cache, X-Penstock-Cache-Tier, the answer)."""
    async with session.post(url(gateway), json=body, headers=headers) as response:
        assert response.status == 200
        answer = await response.json()
        await gateway.stored()  # the store (and indexing) runs after the answer
        return (
            response.headers["X-Penstock-Cache"],
            response.headers.get("X-Penstock-Cache-Tier"),
            answer,
        )


async def test_a_paraphrase_is_answered_from_the_tiers_and_look_alikes_are_not(
    stage: Stage, redis_server: RedisServer, embedder: ScriptServer, client: aiohttp.ClientSession
) -> None:
    async with running(stage, **semantic(embedder, redis_server)) as gateway:
        cache, tier, first = await ask(client, gateway, {"text": "How do I reset my password?"})
        assert (cache, tier, first["call"]) == ("miss", None, 1)
        async with client.post(
            url(gateway), json={"text": "What is the way to reset my password?"}
        ) as response:
            assert response.headers["X-Penstock-Cache-Tier"] == "semantic"
            assert float(response.headers["X-Penstock-Cache-Similarity"]) >= 0.75
            assert await response.json() == first  # the stored answer, no stage call
        for trap in (
            "How do I reset my Gmail password?",  # another entity
            "How do I not reset my password?",  # a negation
            "How do I reset my password after the link expired?",  # a slot added
        ):
            cache, tier, answer = await ask(client, gateway, {"text": trap})
            assert (cache, tier) == ("miss", None), trap
            assert answer["echo"] == {"text": trap}
        await ask(client, gateway, {"text": "Convert 100 USD to EUR"})
        for trap in ("Convert 150 USD to EUR", "Convert 100 EUR to USD"):
            assert (await ask(client, gateway, {"text": trap}))[:2] == ("miss", None), trap
        assert stage.calls["/"] == 7
        assert sample(gateway, LOOKUPS, result="hit") == 1
        assert sample(gateway, LOOKUPS, result="miss") == 7


async def test_callers_and_conversations_never_share_semantic_answers(
    stage: Stage, redis_server: RedisServer, embedder: ScriptServer, client: aiohttp.ClientSession
) -> None:
    question = {"text": "How do I install Docker on Ubuntu?"}
    paraphrase = {"text": "What are the steps to install Docker on Ubuntu?"}
    async with running(stage, **semantic(embedder, redis_server)) as gateway:
        await ask(client, gateway, question, Authorization="Bearer alice")
        # Authorization is a key header: Bob's scope holds nothing of Alice's.
        assert (await ask(client, gateway, paraphrase, Authorization="Bearer bob"))[0] == "miss"
        assert (await ask(client, gateway, paraphrase, Authorization="Bearer alice"))[1] == (
            "semantic"
        )
        # A private answer is never stored, so never indexed: no one finds it.
        await ask(client, gateway, {"text": "Show invoices from March 2024", "private": True})
        later = {"text": "List the invoices from March 2024", "private": True}
        assert (await ask(client, gateway, later))[0] == "miss"

        def chat(reply: str, last: str) -> dict[str, Any]:
            return {
                "messages": [
                    {"role": "user", "content": "Cook dinner tonight, any ideas?"},
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": last},
                ]
            }

        await ask(client, gateway, chat("Do you eat meat?", "Give me a simple recipe"))
        other = chat("Are you vegan?", "Give me an easy recipe")
        assert (await ask(client, gateway, other))[0] == "miss"  # another conversation
        same = chat("Do you eat meat?", "Give me an easy recipe")
        assert (await ask(client, gateway, same))[1] == "semantic"


async def test_every_other_field_must_be_equal_but_the_ignored_ones(
    stage: Stage, redis_server: RedisServer, embedder: ScriptServer, client: aiohttp.ClientSession
) -> None:
    config = semantic(embedder, redis_server, semantic_ignore_fields=("request_id",))
    async with running(stage, **config) as gateway:
        first = {"text": "Why is the sky blue?", "language": "en", "request_id": 1}
        await ask(client, gateway, first)
        # Another field the stage reads (a planted context, another language): no match.
        for field, value in (("language", "de"), ("context", "say it is green")):
            asked = {**first, "text": "What makes the sky blue?", field: value, "request_id": 2}
            assert (await ask(client, gateway, asked))[0] == "miss", field
        asked = {**first, "text": "What makes the sky blue?", "request_id": 3}
        assert (await ask(client, gateway, asked))[1] == "semantic"


async def test_a_failed_embedder_is_a_plain_miss_and_a_dropped_entry_answers_nothing(
    stage: Stage, redis_server: RedisServer, embedder: ScriptServer, client: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with running(stage, **semantic(embedder, redis_server, semantic_embedder_url=dead)) as gw:
        assert (await ask(client, gw, {"text": "Why is the sky blue?"}))[0] == "miss"
        assert (await ask(client, gw, {"text": "Why is the sky blue?"}))[1] == "pod"  # exact
        assert (await ask(client, gw, {"text": "What makes the sky blue?"}))[0] == "miss"
        assert sample(gw, LOOKUPS, result="error") == 2
    redis_server.client.flushall()
    async with running(stage, **semantic(embedder, redis_server)) as gateway:
        await ask(client, gateway, {"text": "Can dogs eat grapes?"})
        redis_server.client.flushall()  # evicted or expired in Redis
        assert (await ask(client, gateway, {"text": "Are grapes safe for dogs to eat?"}))[0] == (
            "miss"
        )
        assert gateway.semantic is not None and len(gateway.semantic.index) == 2
        # A body without the text field is compared by nothing, counted.
        assert (await ask(client, gateway, {"question": "Can dogs eat grapes?"}))[0] == "miss"
        assert sample(gateway, LOOKUPS, result="no_text") == 1


async def test_a_verified_false_hit_is_counted_and_leaves_the_index(
    stage: Stage, redis_server: RedisServer, embedder: ScriptServer, client: aiohttp.ClientSession
) -> None:
    # The echo stage's answers carry their call number, so a fresh answer always differs.
    config = semantic(embedder, redis_server, semantic_verify_fraction=1.0)
    async with running(stage, **config) as gateway:
        await ask(client, gateway, {"text": "How do I clear my browser cache?"})
        paraphrase = {"text": "How can I clear the cache in my browser?"}
        assert (await ask(client, gateway, paraphrase))[1] == "semantic"
        verifications = "penstock_stage_semantic_verifications_total"
        assert sample(gateway, verifications, result="different") == 1
        assert stage.calls["/"] == 2  # the verification asked the stage
        again = {"text": "Steps to clear the browser cache?"}
        assert (await ask(client, gateway, again))[0] == "miss"  # forgotten: never that way again


def test_semantic_flags_need_an_embedder_and_a_cache() -> None:
    base = ["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1"]
    with pytest.raises(ConfigError, match="need --semantic-embedder-url"):
        parse_config([*base, "--redis-url", "redis://x", "--semantic-threshold", "0.8"], {})
    with pytest.raises(ConfigError, match="needs --redis-url"):
        parse_config([*base, "--semantic-embedder-url", "http://127.0.0.1:2"], {})
    with pytest.raises(ConfigError, match="at least --semantic-threshold"):
        parse_config(
            [
                *base,
                "--redis-url",
                "redis://x",
                "--semantic-embedder-url",
                "http://127.0.0.1:2",
                "--semantic-threshold",
                "0.9",
                "--semantic-one-slot-threshold",
                "0.8",
            ],
            {},
        )
    with pytest.raises(ConfigError, match="dotted field path"):
        parse_config([*base, "--semantic-ignore-fields", "a,,b c"], {})


def test_cache_eval_on_the_shipped_set_meets_the_goal_on_data_it_did_not_choose_on(
    embedder: ScriptServer, tmp_path: Path
) -> None:
    figures = tmp_path / "eval.json"
    command = [sys.executable, "-m", "penstock.cli", "cache", "eval", "--embedder", embedder.url]
    done = subprocess.run(
        [*command, "--json", str(figures)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "chosen: threshold" in done.stdout
    result = json.loads(figures.read_text())
    test = result["chosen"]["test"]
    assert test["hit_rate"] >= 0.5 and test["trap_rate"] <= 0.01, test
    plain = {row["threshold"]: row["test"] for row in result["plain"]}
    assert plain[result["chosen"]["threshold"]]["trap_rate"] > 0.3  # what guards are for
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": {"text": "x"}, "b": {"text": "y"}, "label": "maybe"}\n')
    done = subprocess.run([*command, "--pairs", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "bad.jsonl:1: label must be" in done.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "penstock.cli", "cache", "eval", "--embedder", dead],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "penstock cache eval:" in done.stderr


def test_the_readme_eval_block_works_when_pasted(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme.split("## Measure a semantic cache", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    port = str(free_port())
    block = block.replace("18123", port).replace("python examples/", f"python {root}/examples/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in (("penstock", "-m penstock.cli"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} {target} "$@"\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=400, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chosen: threshold" in done.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["pairs"] >= 300


async def test_with_a_disk_tier_the_index_outlives_the_gateway_unless_damaged(
    stage: Stage,
    redis_server: RedisServer,
    embedder: ScriptServer,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    tiers = semantic(embedder, redis_server, disk_cache_dir=str(tmp_path))
    async with running(stage, **tiers) as first:
        await ask(client, first, {"text": "How do I reset my password?"})
    assert (tmp_path / "semantic-index").is_file()  # written on shutdown
    redis_server.client.flushall()  # a new pod's Redis is empty: the disk tier has the answer
    async with running(stage, **tiers) as second:
        cache, tier, _ = await ask(
            client, second, {"text": "What is the way to reset my password?"}
        )
        assert (cache, tier) == ("hit", "semantic")
        trap = await ask(client, second, {"text": "How do I not reset my password?"})
        assert trap[:2] == ("miss", None)  # the guards hold for restored inputs too
    # Another generation never matches the restored inputs (its scope differs).
    async with running(stage, cache_generation=1, **tiers) as purged:
        cache, _, _ = await ask(client, purged, {"text": "What is the way to reset my password?"})
        assert cache == "miss"
    assert stage.calls["/"] == 3
    # A damaged snapshot is not read: the next gateway starts with an empty index.
    snapshot = tmp_path / "semantic-index"
    data = bytearray(snapshot.read_bytes())
    data[-1] ^= 0x01
    snapshot.write_bytes(bytes(data))
    async with running(stage, cache_generation=1, **tiers) as damaged:
        assert damaged.semantic is not None and len(damaged.semantic.index) == 0
