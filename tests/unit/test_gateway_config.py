"""Unit tests: gateway flags, environment variables, coalescing and the cost formula."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from penstock.dataplane.gateway.coalesce import Coalescer
from penstock.dataplane.gateway.command import main
from penstock.dataplane.gateway.config import ConfigError, HostPort, env_name, parse_config
from penstock.dataplane.gateway.sharing import cache_directives
from penstock.dataplane.gateway.stage import strip_headers
from penstock.dataplane.gateway.telemetry import request_cost_usd
from penstock.dataplane.server import traces_url

BASE = ["--listen", "127.0.0.1:8000", "--upstream", "http://127.0.0.1:8080"]


def test_minimal_flags_and_defaults() -> None:
    config = parse_config(BASE, environ={})
    assert config.listen == HostPort("127.0.0.1", 8000)
    assert config.admin_listen == HostPort("127.0.0.1", 9090)
    assert config.upstream == "http://127.0.0.1:8080"
    assert config.redis_url is None
    assert not config.batching
    assert config.cache_key_headers == ("accept", "authorization")


def test_every_flag_from_the_environment(tmp_path: Path) -> None:
    body = tmp_path / "warm.json"
    body.write_text('{"text": "warm"}')
    env = {
        env_name("--listen"): "0.0.0.0:8000",
        env_name("--upstream"): "http://127.0.0.1:8080/",
        "PENSTOCK_GATEWAY_ADMIN_LISTEN": "0.0.0.0:9091",
        "PENSTOCK_GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PENSTOCK_GATEWAY_CACHE_TTL_SECONDS": "60",
        "PENSTOCK_GATEWAY_CACHE_MAX_ENTRY_BYTES": "1000",
        "PENSTOCK_GATEWAY_CACHE_KEY_HEADERS": "X-Tenant, Accept-Language",
        "PENSTOCK_GATEWAY_BATCH_MAX_SIZE": "16",
        "PENSTOCK_GATEWAY_BATCH_MAX_LATENCY_MS": "2.5",
        "PENSTOCK_GATEWAY_BATCH_PATH": "/batch",
        "PENSTOCK_GATEWAY_WARMUP_REQUESTS": "3",
        "PENSTOCK_GATEWAY_WARMUP_BODY": str(body),
        "PENSTOCK_GATEWAY_WARMUP_PATH": "/warm",
        "PENSTOCK_GATEWAY_PIPELINE": "rag",
        "PENSTOCK_GATEWAY_STAGE": "embed",
        "PENSTOCK_GATEWAY_NAMESPACE": "search",
        "PENSTOCK_GATEWAY_COST_CENTER": "search-team",
        "PENSTOCK_GATEWAY_HOURLY_COST": "2.5",
        "PENSTOCK_GATEWAY_OTLP_ENDPOINT": "http://collector:4318",
        "PENSTOCK_GATEWAY_SAMPLING_RATIO": "0.1",
        "PENSTOCK_GATEWAY_TIMEOUT_SECONDS": "7",
        "PENSTOCK_GATEWAY_MAX_BODY_BYTES": "2048",
        "PENSTOCK_GATEWAY_STAGE_IMAGE": "registry.example/embedder:2.0",
        "PENSTOCK_GATEWAY_MODEL_VERSION": "abc",
        "REDIS_PASSWORD": "s3cret",
    }
    config = parse_config([], environ=env)
    assert config.upstream == "http://127.0.0.1:8080"
    assert config.admin_listen == HostPort("0.0.0.0", 9091)
    assert config.cache_ttl_seconds == 60
    assert config.cache_max_entry_bytes == 1000
    assert config.cache_key_headers == ("accept-language", "x-tenant")
    assert (config.batch_max_size, config.batch_max_latency_ms, config.batch_path) == (
        16,
        2.5,
        "/batch",
    )
    assert config.warmup_requests == 3
    assert config.warmup_body == b'{"text": "warm"}'
    assert config.warmup_path == "/warm"
    assert (config.pipeline, config.stage, config.namespace) == ("rag", "embed", "search")
    assert (config.cost_center, config.hourly_cost) == ("search-team", 2.5)
    assert (config.otlp_endpoint, config.sampling_ratio) == ("http://collector:4318", 0.1)
    assert config.timeout_seconds == 7
    assert config.max_body_bytes == 2048
    assert (config.stage_image, config.model_version) == ("registry.example/embedder:2.0", "abc")
    assert config.redis_password == "s3cret"


def test_flag_wins_over_environment() -> None:
    env = {"PENSTOCK_GATEWAY_TIMEOUT_SECONDS": "7"}
    assert parse_config([*BASE, "--timeout-seconds", "3"], environ=env).timeout_seconds == 3


def test_empty_key_headers_means_none() -> None:
    config = parse_config([*BASE, "--cache-key-headers", ""], environ={})
    assert config.cache_key_headers == ()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--listen is required"),
        (["--listen", "127.0.0.1:1"], {}, "--upstream is required"),
        ([*BASE, "--bogus"], {}, "unrecognized arguments"),
        (["--listen", "nowhere", "--upstream", "http://x"], {}, "--listen: 'nowhere'"),
        (["--listen", "h:99999", "--upstream", "http://x"], {}, "out of range"),
        (["--listen", "h:1", "--upstream", "ftp://x"], {}, "--upstream: 'ftp://x'"),
        ([*BASE, "--redis-url", "http://x"], {}, "--redis-url"),
        ([*BASE, "--cache-ttl-seconds", "0"], {}, "--cache-ttl-seconds: 0 is not a positive"),
        ([*BASE, "--sampling-ratio", "1.5"], {}, "--sampling-ratio"),
        ([*BASE, "--timeout-seconds", "0"], {}, "--timeout-seconds"),
        ([*BASE, "--hourly-cost", "nan"], {}, "--hourly-cost"),
        ([*BASE, "--batch-path", "batch"], {}, "must start with '/'"),
        ([*BASE, "--batch-max-size", "4"], {}, "need --batch-path"),
        ([*BASE, "--batch-max-queue", "4"], {}, "need --batch-path"),
        ([*BASE, "--batch-path", "/b", "--batch-max-queue", "0"], {}, "--batch-max-queue: 0"),
        ([*BASE, "--cache-key-headers", "x tenant"], {}, "not a header name"),
        ([*BASE, "--warmup-body", "/nonexistent/x"], {}, "--warmup-body: cannot read"),
        ([*BASE], {"PENSTOCK_GATEWAY_BATCH_MAX_SIZE": "x"}, "PENSTOCK_GATEWAY_BATCH_MAX_SIZE"),
        (["--listen", "h:1", "--upstream", "http://x", "--admin-listen", "h:1"], {}, "differ"),
    ],
)
def test_bad_values_are_named(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        parse_config(argv, environ=env)


def test_batch_queue_bound() -> None:
    batching = [*BASE, "--batch-path", "/batch"]
    assert parse_config(batching, environ={}).batch_queue_limit == 64
    big = parse_config([*batching, "--batch-max-size", "32"], environ={})
    assert big.batch_queue_limit == 4 * 32 * 2
    assert parse_config([*batching, "--batch-max-queue", "5"], environ={}).batch_queue_limit == 5


def test_main_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--sampling-ratio", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("penstock gateway: error: --sampling-ratio")
    assert "Traceback" not in err


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "PENSTOCK_GATEWAY_REDIS_URL" in capsys.readouterr().out


def test_cost_formula() -> None:
    assert request_cost_usd(3.6, 2.0) == pytest.approx(0.002)
    assert request_cost_usd(3.6, 2.0, sharers=4) == pytest.approx(0.0005)
    assert request_cost_usd(0, 2.0) == 0
    assert request_cost_usd(3.6, 0) == 0


def test_traces_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/custom") == "http://c:4318/custom"


def test_hop_by_hop_headers_are_stripped() -> None:
    headers = {
        "Connection": "keep-alive, X-Secret-Hop",
        "Keep-Alive": "timeout=5",
        "Transfer-Encoding": "chunked",
        "TE": "trailers",
        "Upgrade": "h2c",
        "X-Secret-Hop": "1",
        "Host": "example",
        "Content-Type": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    out = strip_headers(headers, frozenset({"host"}))
    assert sorted(name for name, _ in out) == ["Content-Type", "traceparent"]


def test_cache_directives() -> None:
    assert cache_directives({"Cache-Control": "No-Cache, max-age=0"}) == {"no-cache", "max-age"}
    assert cache_directives({"Pragma": "no-cache"}) == {"no-cache"}
    assert cache_directives({}) == set()


async def test_coalescer_shares_one_call_and_errors() -> None:
    coalescer: Coalescer[int] = Coalescer()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 42

    results = await asyncio.gather(*(coalescer.run("k", work) for _ in range(10)))
    assert calls == 1
    assert [r.value for r in results] == [42] * 10
    assert sum(r.leader for r in results) == 1
    assert {r.sharers for r in results} == {10}
    assert coalescer.coalesced == 9
    assert len(coalescer) == 0

    async def fail() -> int:
        await asyncio.sleep(0.05)
        raise ValueError("stage down")

    outcomes = await asyncio.gather(
        *(coalescer.run("k", fail) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, ValueError) and str(o) == "stage down" for o in outcomes)
    again = await coalescer.run("k", work)
    assert again.leader and calls == 2
