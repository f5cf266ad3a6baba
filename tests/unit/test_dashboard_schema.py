"""The shipped Grafana dashboard matches Grafana's own published schema.

hack/check-dashboard.sh type-checks the dashboard JSON against the types of the @grafana/schema
npm package with tsc (installing both, pinned by hack/grafana-schema/package-lock.json, into a
cache outside the checkout when it is cold). The mutated copies prove that the check can fail:
a wrong type, an unknown key, an enum value Grafana does not know and a missing required field
are each reported with the dashboard file's own line number.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "check-dashboard.sh"
DASHBOARD = ROOT / "charts" / "penstock" / "files" / "dashboards" / "penstock.json"

Dashboard = dict[str, Any]


def check(*dashboards: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    # 300 s: a cold cache runs `npm ci` first (about 3 s and 33 MB; the bound is for a slow
    # registry); a warm check takes under a second.
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), *map(str, dashboards)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_the_shipped_dashboard_matches_grafanas_schema() -> None:
    result = check(DASHBOARD)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"ok: {DASHBOARD}" in result.stdout


def _panel(dashboard: Dashboard, kind: str) -> dict[str, Any]:
    panel: dict[str, Any] = next(p for p in dashboard["panels"] if p["type"] == kind)
    return panel


def _grid_height_as_string(d: Dashboard) -> None:
    _panel(d, "stat")["gridPos"]["h"] = "4"


def _unknown_panel_key(d: Dashboard) -> None:
    _panel(d, "timeseries")["colour"] = "red"


def _unknown_stat_option(d: Dashboard) -> None:
    _panel(d, "stat")["options"]["sparkline"] = True


def _unknown_enum_value(d: Dashboard) -> None:
    _panel(d, "timeseries")["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "lines"


def _query_without_expr(d: Dashboard) -> None:
    del _panel(d, "table")["targets"][0]["expr"]


def _row_without_collapsed(d: Dashboard) -> None:
    del _panel(d, "row")["collapsed"]


def _panel_type_without_schema(d: Dashboard) -> None:
    _panel(d, "timeseries")["type"] = "graph"


MUTATIONS: dict[str, tuple[Callable[[Dashboard], None], str]] = {
    # name: (mutation, what tsc must say)
    "gridPos.h is a string": (_grid_height_as_string, "error TS2322: Type 'string' is not assignable to type 'number'"),
    "unknown panel key": (_unknown_panel_key, "'\"colour\"' does not exist in type"),
    "unknown stat option": (_unknown_stat_option, "'\"sparkline\"' does not exist in type"),
    "unknown enum value": (_unknown_enum_value, "Type '\"lines\"' is not assignable to type '\"bars\" | \"line\" | \"points\" | undefined'"),
    "query without expr": (_query_without_expr, "is not assignable to type 'PrometheusQuery'"),
    "row without collapsed": (_row_without_collapsed, "error TS2322"),
    "panel type without a schema": (_panel_type_without_schema, "Type '\"graph\"' is not assignable"),
}  # fmt: skip


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_check_fails_for_a_dashboard_that_breaks_the_schema(name: str, tmp_path: Path) -> None:
    mutate, message = MUTATIONS[name]
    original: Dashboard = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(original)
    mutate(broken)
    assert broken != original
    mutated = tmp_path / "dashboard.json"
    mutated.write_text(json.dumps(broken, indent=2) + "\n")
    result = check(mutated)
    assert result.returncode == 1, f"{name}: the check passed\n{result.stdout}\n{result.stderr}"
    assert f"FAIL: {mutated}" in result.stdout
    # Each error names the dashboard file (not the generated .ts) and a line of it.
    errors = [line for line in result.stdout.splitlines() if ": error TS" in line]
    assert errors, result.stdout
    assert all(line.startswith(f"{mutated}(") for line in errors), result.stdout
    assert message in result.stdout, result.stdout


def test_the_check_fails_clearly_without_node(tmp_path: Path) -> None:
    # Only what the script needs before it looks for node: no node, no npm on this PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None
    (bin_dir / "dirname").symlink_to(dirname)
    result = check(DASHBOARD, path=str(bin_dir))
    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    assert "node is not on PATH" in result.stderr
    assert "Node.js" in result.stderr
