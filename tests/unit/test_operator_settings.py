from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import pytest

from penstock.controller.main import run_operator
from penstock.controller.settings import add_operator_arguments, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_operator_arguments(parser)
    return parser.parse_args(argv)


def test_environment_sets_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSTOCK_NAMESPACES", "a,b")
    monkeypatch.setenv("PENSTOCK_RESYNC_SECONDS", "15")
    monkeypatch.setenv("PENSTOCK_OTLP_ENDPOINT", "http://collector:4318")
    settings = settings_from_args(parse("--resync-seconds", "5"))
    assert settings.namespaces == ("a", "b")
    assert settings.resync_seconds == 5
    assert settings.render.otlp_endpoint == "http://collector:4318"
    assert settings.peering is None


def test_a_prometheus_url_puts_every_stage_behind_a_measuring_gateway() -> None:
    assert not settings_from_args(parse()).render.measure_every_stage
    tuned = settings_from_args(parse("--prometheus-url", "http://prometheus:9090"))
    assert tuned.render.measure_every_stage


def test_price_table_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("cpuCoreHour: 0.05\nmemoryGiBHour: 0.01\ngpuHour: {a100: 3.0}\n")
    prices = settings_from_args(parse("--price-table", str(path))).render.prices
    assert prices.cpu_core_hour == Decimal("0.05")
    assert prices.gpu_price("a100") == Decimal("3.0")


def test_bad_price_table_stops_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("cpuCoreHour: cheap\n")
    assert run_operator(parse("--price-table", str(path))) == 2
    assert "cpuCoreHour" in capsys.readouterr().err


def test_bad_url_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--otlp-endpoint", "collector:4318")
    assert "not an http(s) URL" in capsys.readouterr().err
