"""penstock dev removes its temporary directory on every way out, early errors included."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from penstock.dev import runner

pytestmark = pytest.mark.integration


def pipeline(tmp_path: Path, command: str | None) -> Path:
    annotations = {} if command is None else {"penstock.dev/dev-command.a": command}
    doc: dict[str, Any] = {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"stages": [{"name": "a", "image": "a:1"}]},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def dev(path: Path, *extra: str) -> int:
    return runner.main([str(path), "--port", "0", "--ready-timeout", "20", *extra])


EXIT = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'"


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (None, "has no dev command"),
        ("'unclosed", "cannot parse the command"),
        ("/nonexistent/penstock-stage --port {port}", "cannot start /nonexistent/penstock-stage"),
        (EXIT, "exited with status 3 while starting"),
    ],
)
def test_an_early_error_leaves_no_temporary_directory(
    tmp_path: Path, temp_root: Path, capsys: pytest.CaptureFixture[str], command: str | None, needle: str
) -> None:  # fmt: skip
    assert dev(pipeline(tmp_path, command)) == 1
    err = capsys.readouterr().err
    assert needle in err
    assert list(temp_root.iterdir()) == []
    if command == EXIT:
        assert "boom" in err  # the log's tail is in the message
        assert "now removed: --log-dir DIR keeps them" in err


def test_an_invalid_pipeline_creates_nothing(tmp_path: Path, temp_root: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: &x [*x]\n")
    assert dev(path) == 1
    assert list(temp_root.iterdir()) == []


def test_log_dir_is_kept(tmp_path: Path, temp_root: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    logs = tmp_path / "logs"
    assert dev(pipeline(tmp_path, EXIT), "--log-dir", str(logs)) == 1
    assert "boom" in (logs / "stage-a.log").read_text()
    assert "--log-dir DIR keeps them" not in capsys.readouterr().err
    assert list(temp_root.iterdir()) == []


def test_sigterm_while_waiting_removes_it_too(tmp_path: Path, temp_root: Path) -> None:
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)'"
    timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert dev(pipeline(tmp_path, sleeper)) == 0
    finally:
        timer.cancel()
    assert list(temp_root.iterdir()) == []
