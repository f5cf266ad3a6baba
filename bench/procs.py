"""The processes a bench starts: stopped on the way out (terminate, then kill), whatever
happens; their stderr shown with BENCH_VERBOSE=1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    """A loopback port free right now (for a process to listen on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def router_command(pipeline: Path, port: int, stage_urls: Sequence[str]) -> list[str]:
    """A ``penstock router`` for the Pipeline file, on ``port``, its stages (``stage=URL`` or
    ``stage/variant=URL``) at the given URLs."""
    command = [
        sys.executable,
        "-c",
        "import sys; from penstock.dataplane.router import main; sys.exit(main())",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{free_port()}",
        "--pipeline",
        str(pipeline),
    ]
    for url in stage_urls:
        command += ["--stage-url", url]
    return command


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values``, nearest-rank (as penstock analyze reports them)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]
