"""Every benchmark command the documents write starts (a script named like a standard-library
module once shadowed it and failed at `import argparse`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
SCRIPTS = sorted(
    {
        match
        for document in DOCUMENTS
        for match in re.findall(r"python (bench/[a-z_]+\.py)", document.read_text())
    }
)


def test_the_documents_name_benchmarks() -> None:
    assert "bench/operator_scale.py" in SCRIPTS
    assert "bench/gateway.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_documented_benchmark_starts(script: str) -> None:
    assert (ROOT / script).exists(), f"{script} is documented but does not exist"
    result = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
