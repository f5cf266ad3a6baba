"""Unit tests: the ``penstock preload`` command line and its environment variables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from penstock.preload import PreloadError, main
from penstock.preload.archive import Limits
from penstock.preload.command import _UsageError, parse_settings

DIGEST = hashlib.sha256(b"x").hexdigest()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "URI", "DEST", "SHA256", "TIMEOUT_SECONDS", "MAX_BYTES", "MAX_FILES", "MAX_EXPANSION_RATIO"
    ):  # fmt: skip
        monkeypatch.delenv(f"PENSTOCK_PRELOAD_{name}", raising=False)


def test_flags() -> None:
    s = parse_settings(
        [
            "--uri",
            "s3://b/m.tgz",
            "--dest",
            "/models",
            "--sha256",
            DIGEST.upper(),
            "--timeout-seconds",
            "30",
        ]
    )
    assert (s.uri, s.dest, s.sha256, s.timeout_seconds) == (
        "s3://b/m.tgz",
        Path("/models"),
        DIGEST,
        30.0,
    )


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSTOCK_PRELOAD_URI", "https://h/m.bin")
    monkeypatch.setenv("PENSTOCK_PRELOAD_DEST", "/models")
    monkeypatch.setenv("PENSTOCK_PRELOAD_SHA256", DIGEST)
    monkeypatch.setenv("PENSTOCK_PRELOAD_TIMEOUT_SECONDS", "12.5")
    s = parse_settings([])
    assert (s.uri, s.dest, s.sha256, s.timeout_seconds) == (
        "https://h/m.bin",
        Path("/models"),
        DIGEST,
        12.5,
    )


def test_flags_win_over_environment_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSTOCK_PRELOAD_URI", "https://h/env.bin")
    monkeypatch.setenv("PENSTOCK_PRELOAD_SHA256", "")
    monkeypatch.setenv("PENSTOCK_PRELOAD_TIMEOUT_SECONDS", " ")
    s = parse_settings(["--uri", "/m/flag.bin", "--dest", "d"])
    assert (s.uri, s.sha256, s.timeout_seconds) == ("/m/flag.bin", None, 600.0)


def test_missing_required_settings_name_flag_and_variable() -> None:
    with pytest.raises(_UsageError, match="--uri or set PENSTOCK_PRELOAD_URI"):
        parse_settings(["--dest", "/models"])
    with pytest.raises(_UsageError, match="--dest or set PENSTOCK_PRELOAD_DEST"):
        parse_settings(["--uri", "/m.bin"])


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_bad_timeout_names_its_source(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(PreloadError, match=f"--timeout-seconds '{value}' is not a positive"):
        parse_settings(["--uri", "/m.bin", "--dest", "d", "--timeout-seconds", value])
    monkeypatch.setenv("PENSTOCK_PRELOAD_TIMEOUT_SECONDS", value)
    with pytest.raises(PreloadError, match=f"PENSTOCK_PRELOAD_TIMEOUT_SECONDS '{value}'"):
        parse_settings(["--uri", "/m.bin", "--dest", "d"])


def test_bad_digest_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSTOCK_PRELOAD_SHA256", "deadbeef")
    with pytest.raises(PreloadError, match=r"^PENSTOCK_PRELOAD_SHA256 'deadbeef' is not a SHA-256"):
        parse_settings(["--uri", "/m.bin", "--dest", "d"])


def test_help_mentions_every_variable_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: penstock preload")
    for name in (
        "URI", "DEST", "SHA256", "TIMEOUT_SECONDS", "MAX_BYTES", "MAX_FILES", "MAX_EXPANSION_RATIO"
    ):  # fmt: skip
        assert f"PENSTOCK_PRELOAD_{name}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dest", "/tmp/x"], "error: no model URI given"),
        (
            ["--uri", "/m.bin", "--dest", "/tmp/x", "--bogus"],
            "error: unrecognized arguments: --bogus",
        ),
        (
            ["--uri", "gs://b/m.bin", "--dest", "/tmp/x"],
            "error: model URI 'gs://b/m.bin' has unsupported",
        ),
        (["--uri", "/m.bin", "--dest", "/tmp/x", "--sha256", "zz"], "error: --sha256 'zz' is not"),
    ],
)
def test_main_reports_errors_on_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.count("error:") == 1


def test_limits_default_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--uri", "/m.tgz", "--dest", "d"]
    assert parse_settings(base).limits == Limits(10 * 2**30, 10_000, 100.0)
    flags = ["--max-bytes", "1.5Gi", "--max-files", "7", "--max-expansion-ratio", "0"]
    assert parse_settings([*base, *flags]).limits == Limits(3 * 2**29, 7, 0.0)
    monkeypatch.setenv("PENSTOCK_PRELOAD_MAX_BYTES", "2048")
    monkeypatch.setenv("PENSTOCK_PRELOAD_MAX_FILES", "3")
    monkeypatch.setenv("PENSTOCK_PRELOAD_MAX_EXPANSION_RATIO", "2.5")
    assert parse_settings(base).limits == Limits(2048, 3, 2.5)
    assert parse_settings([*base, "--max-bytes", "1k"]).limits.max_bytes == 1000


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-bytes", "lots", "not a Kubernetes quantity"),
        ("--max-bytes", "-1Gi", "negative"),
        ("--max-bytes", "0", "at least 1 byte"),
        ("--max-bytes", "1e9999", "too large"),
        ("--max-files", "0", "not a positive integer"),
        ("--max-files", "1.5", "not a positive integer"),
        ("--max-expansion-ratio", "-1", "not a number of 0 or more"),
        ("--max-expansion-ratio", "inf", "not a number of 0 or more"),
    ],
)
def test_bad_limits_name_their_flag(flag: str, value: str, needle: str) -> None:
    with pytest.raises(PreloadError, match=f"{flag} '{value}'.*{needle}"):
        parse_settings(["--uri", "/m.bin", "--dest", "d", f"{flag}={value}"])
