"""Unit tests: the listener limit flags both commands take, their defaults and bad values."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from penstock.dataplane import router
from penstock.dataplane.gateway import config as gateway_config
from penstock.dataplane.limits import LIMIT_FLAGS, Identity, ServerLimits, open_files_allow

GATEWAY = ["--listen", "127.0.0.1:8000", "--upstream", "http://127.0.0.1:8080"]
VALUES = {
    "--header-timeout-seconds": ("2.5", "header_timeout", 2.5),
    "--body-timeout-seconds": ("7", "body_timeout", 7.0),
    "--idle-timeout-seconds": ("90", "idle_timeout", 90.0),
    "--max-connections": ("200", "max_connections", 200),
}


@pytest.fixture
def router_argv(tmp_path: Path) -> list[str]:
    path = tmp_path / "topology.json"
    stages = [{"name": "a", "url": "http://127.0.0.1:9"}]
    path.write_text(json.dumps({"pipeline": "p", "output": "a", "stages": stages}))
    return ["--listen", "127.0.0.1:8080", "--topology", str(path)]


def test_defaults() -> None:
    assert ServerLimits() == ServerLimits(10.0, 30.0, 75.0, 1024)
    assert set(VALUES) == set(LIMIT_FLAGS)
    assert gateway_config.parse_config(GATEWAY, {}).limits == ServerLimits()


def test_router_flags_and_env(router_argv: list[str]) -> None:
    assert router.parse_config(router_argv, {}).limits == ServerLimits()
    for flag, (text, name, value) in VALUES.items():
        from_flag = router.parse_config([*router_argv, flag, text], {}).limits
        from_env = router.parse_config(router_argv, {router.env_name(flag): text}).limits
        assert getattr(from_flag, name) == getattr(from_env, name) == value


def test_gateway_flags_and_env() -> None:
    for flag, (text, name, value) in VALUES.items():
        from_flag = gateway_config.parse_config([*GATEWAY, flag, text], {}).limits
        env = {gateway_config.env_name(flag): text}
        from_env = gateway_config.parse_config(GATEWAY, env).limits
        assert getattr(from_flag, name) == getattr(from_env, name) == value


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--header-timeout-seconds", "0", "not in (0, 86400]"),
        ("--body-timeout-seconds", "-1", "not in (0, 86400]"),
        ("--idle-timeout-seconds", "nan", "not in (0, 86400]"),
        ("--idle-timeout-seconds", "soon", "not a number"),
        ("--max-connections", "0", "not a positive integer"),
        ("--max-connections", "1.5", "not an integer"),
    ],
)
def test_bad_values_are_named(router_argv: list[str], flag: str, text: str, message: str) -> None:
    with pytest.raises(router.ConfigError, match=flag) as error:
        router.parse_config([*router_argv, flag, text], {})
    assert message in str(error.value)
    with pytest.raises(gateway_config.ConfigError, match=flag) as error:
        gateway_config.parse_config([*GATEWAY, flag, text], {})
    assert message in str(error.value)


def test_raw_answer_is_complete_http() -> None:
    raw = Identity("the router of pipeline 'p'", {"pipeline": "p"}).raw(503, "busy", "X: 1\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nConnection: close" in head and b"\r\nX: 1" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": "the router of pipeline 'p': busy", "pipeline": "p"}


def test_open_files_limit_is_raised_or_the_bound_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024, "hard": 1024}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        limits["soft"] = values[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert open_files_allow(1024) == (1024 - 256) // 2  # the hard limit is too low: warned
    limits.update(soft=1024, hard=100_000)
    assert open_files_allow(1024) == 1024
    assert limits["soft"] == 1024 * 2 + 256  # raised as far as needed, not to the hard limit
