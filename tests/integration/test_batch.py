"""penstock batch with real processes: the CLI, `penstock dev` (stages, a batching gateway,
the router) on loopback, inputs from a file, HTTP and S3 (moto), SIGKILL and resume."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import server as moto_server

from tests.batch_stage import pipeline_yaml
from tests.batch_stage import served as served_pipeline
from tests.support import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def write_items(path: Path, count: int, extra: list[str] | None = None) -> Path:
    lines = [json.dumps({"id": f"doc-{i}", "text": f"item {i}"}) for i in range(count)]
    path.write_text("\n".join([*lines, *(extra or [])]) + "\n")
    return path


def batch(
    *args: str, check_rc: int | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "penstock.cli", "batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`penstock dev` of the test Pipeline; its router URL and the count stage's call record."""
    work = tmp_path_factory.mktemp("batch-dev")
    record = work / "count-calls.txt"
    pipeline = work / "pipeline.yaml"
    pipeline.write_text(pipeline_yaml(record))
    with served_pipeline(pipeline, free_port(), work / "logs") as url:
        yield url, record


def test_a_pipeline_file_gets_one_line_per_input_line_in_order(tmp_path: Path) -> None:
    record = tmp_path / "calls.txt"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(pipeline_yaml(record))
    fail = json.dumps({"id": "bad", "text": "boom", "fail": True})
    items = write_items(tmp_path / "in.jsonl", 200, ["not json", "", fail, '{"id": "last"}'])
    output, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    result = batch(
        str(pipeline),
        *("--input", str(items), "--output", str(output), "--id-field", "id"),
        *("--progress", "lines", "--report", str(report), "--retries", "0"),
        check_rc=2,  # some items failed
    )
    lines = records(output)
    assert [line["index"] for line in lines] == list(range(204))
    assert lines[7] == {
        "index": 7,
        "id": "doc-7",
        "output": {
            "stage": "count",
            "text": "ITEM 7",
            "seen": lines[7]["output"]["seen"],
        },
    }
    assert lines[7]["output"]["seen"]["shout"]["text"] == "ITEM 7"
    assert lines[200]["error"]["status"] is None
    assert "input line 201 is not valid JSON" in lines[200]["error"]["message"]
    assert "input line 202: empty line" in lines[201]["error"]["message"]
    assert lines[202]["id"] == "bad"
    assert lines[202]["error"]["status"] == 502
    assert "asked to fail" in lines[202]["error"]["message"]
    assert lines[203]["id"] == "last" and "output" in lines[203]
    summary = json.loads(report.read_text())
    assert (summary["processed"], summary["succeeded"], summary["failed"]) == (204, 201, 3)
    assert summary["complete"] is True
    assert summary["items_per_hour"] > 0
    # The Pipeline file's price: 1 CPU + 1 GiB for shout, the defaults for count, at 1 replica.
    assert float(summary["cost_per_1000_items_usd"]) > 0
    assert "penstock batch: [" in result.stderr and "items/s" in result.stderr
    assert "complete: 204 lines" in result.stderr
    assert summary["failed_total"] == 3
    # A finished run started again has nothing to do and changes nothing; its exit status
    # still says that the output holds failed items.
    before = output.read_bytes()
    again = batch(str(pipeline), "--input", str(items), "--output", str(output), "--id-field", "id")
    assert again.returncode == 2, again.stderr
    assert output.read_bytes() == before
    assert "this run: 0 items" in again.stderr


def test_killed_with_sigkill_it_resumes_and_holds_each_line_once(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    total = 3000
    items = write_items(tmp_path / "in.jsonl", total)
    output = tmp_path / "out.jsonl"
    checkpoint = tmp_path / "out.jsonl.checkpoint"
    args = [url, "--input", str(items), "--output", str(output), "--progress", "none"]
    process = subprocess.Popen(
        [sys.executable, "-m", "penstock.cli", "batch", *args],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            done = json.loads(checkpoint.read_text())["done"] if checkpoint.exists() else 0
            if done >= 300:
                break
            assert time.monotonic() < deadline and process.poll() is None, "no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    state = json.loads(checkpoint.read_text())
    assert not state["complete"] and 300 <= state["done"] < total
    report = tmp_path / "report.json"
    batch(*args, "--report", str(report), check_rc=0)
    lines = records(output)
    assert [line["index"] for line in lines] == list(range(total))
    assert [line["output"]["text"] for line in lines[:3]] == ["ITEM 0", "ITEM 1", "ITEM 2"]
    summary = json.loads(report.read_text())
    assert summary["resumed_after"] >= state["done"]
    assert summary["resumed_after"] + summary["processed"] == total


def test_shed_load_is_retried_and_the_controller_keeps_below_it(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, record = served
    items = write_items(tmp_path / "in.jsonl", 1500)
    fixed, controlled = tmp_path / "fixed.json", tmp_path / "controlled.json"
    # 64 in flight against a stage that holds 4 + 8: it sheds (503), the retries recover.
    batch(
        url,
        *("--input", str(items), "--output", str(tmp_path / "a.jsonl"), "--concurrency", "64"),
        *("--retries", "20", "--report", str(fixed), "--progress", "none"),
        check_rc=0,
    )
    record.write_text("")
    batch(
        url,
        *("--input", str(items), "--output", str(tmp_path / "b.jsonl"), "--progress", "none"),
        *("--report", str(controlled)),
        check_rc=0,
    )
    shed, calm = json.loads(fixed.read_text()), json.loads(controlled.read_text())
    assert shed["retries"] > 0 and shed["failed"] == 0
    assert calm["failed"] == 0
    assert calm["concurrency_peak"] < 64
    assert calm["retries"] < shed["retries"]
    # The count stage's gateway batched what arrived together.
    sizes = [int(line) for line in record.read_text().split()]
    assert sum(sizes) == 1500
    assert max(sizes) > 1


def test_the_plan_gives_the_slow_stage_more_replicas(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    items = write_items(tmp_path / "in.jsonl", 40)
    report = tmp_path / "plan.json"
    result = batch(
        url,
        *("--input", str(items), "--plan", "--target-items-per-hour", "2000000"),
        *("--report", str(report)),
        check_rc=0,
    )
    plan = json.loads(report.read_text())
    stages = {stage["name"]: stage for stage in plan["stages"]}
    assert plan["bottleneck"] == "shout"
    assert stages["shout"]["meanMs"] > stages["count"]["meanMs"]
    shout, count = stages["shout"], stages["count"]
    # More replicas for the slower stage, unless a loaded machine put both at their cap (10).
    assert shout["replicas"] > count["replicas"] or shout["replicas"] == count["replicas"] == 10
    assert "bottleneck shout" in result.stdout


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args: Any) -> None:
        pass


def test_input_over_http_and_from_s3(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = served
    items = write_items(tmp_path / "in.jsonl", 50)
    handler = lambda *a: _Quiet(*a, directory=str(tmp_path))  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    s3_server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    try:
        http_url = f"http://127.0.0.1:{web.server_address[1]}/in.jsonl"
        batch(url, "--input", http_url, "--output", str(tmp_path / "h.jsonl"), check_rc=0)
        assert len(records(tmp_path / "h.jsonl")) == 50
        host, port = s3_server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        s3.put_object(Bucket="data", Key="in.jsonl", Body=items.read_bytes())
        out = tmp_path / "s.jsonl"
        batch(url, "--input", "s3://data/in.jsonl", "--output", str(out), check_rc=0)
        assert [line["output"]["text"] for line in records(out)][-1] == "ITEM 49"
        batch(url, "--input", "s3://data/in.jsonl", "--output", "s3://data/out/", check_rc=0)
        part = s3.get_object(Bucket="data", Key="out/part-00000-of-00001.jsonl")["Body"].read()
        assert part == out.read_bytes()
        missing = batch(url, "--input", "s3://data/nope.jsonl", "--output", str(tmp_path / "m"))
        assert missing.returncode == 3
        assert "input s3://data/nope.jsonl: NoSuchKey" in missing.stderr
    finally:
        web.shutdown()
        s3_server.stop()


def test_an_unreadable_input_is_one_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    gone = f"http://127.0.0.1:{free_port()}/in.jsonl"
    result = batch("http://127.0.0.1:1/", "--input", gone, "--output", str(output))
    assert result.returncode == 3
    assert f"penstock batch: error: input {gone}: cannot connect" in result.stderr
    assert not output.exists()
    missing = batch(
        "http://127.0.0.1:1/", "--input", str(tmp_path / "no.jsonl"), "--output", str(output)
    )
    assert missing.returncode == 3
    assert "No such file or directory" in missing.stderr
    stray = tmp_path / "results.jsonl"
    stray.write_text("keep me\n")
    items = write_items(tmp_path / "in.jsonl", 1)
    refused = batch("http://127.0.0.1:1/", "--input", str(items), "--output", str(stray))
    assert refused.returncode == 3 and "not a batch output to resume" in refused.stderr
    assert stray.read_text() == "keep me\n"


class _Sink(http.server.BaseHTTPRequestHandler):
    """Takes PUTs (a PipelineRun's shard uploads, or a presigned URL's store)."""

    stored: dict[str, bytes]

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.stored[self.path] = self.rfile.read(length)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt: str, *args: Any) -> None:
        pass


def test_shards_split_the_input_and_each_uploads_its_part(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    items = write_items(tmp_path / "in.jsonl", 100, ['{"id": "x", "fail": true}'])
    stored: dict[str, bytes] = {}
    sink = type("Sink", (_Sink,), {"stored": stored})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prefix = f"http://127.0.0.1:{server.server_address[1]}/out/"
    try:
        for shard in range(3):
            result = batch(
                url,
                *("--input", str(items), "--output", prefix, "--shard", f"{shard}/3"),
                *("--work-dir", str(tmp_path / f"w{shard}"), "--allow-item-errors"),
                *("--retries", "0", "--report", str(tmp_path / f"r{shard}.json")),
                check_rc=0,  # the failed item is a record, not a failed shard
            )
            assert f"uploaded part-0000{shard}-of-00003.jsonl to {prefix}" in result.stderr
    finally:
        server.shutdown()
    assert sorted(stored) == [f"/out/part-0000{k}-of-00003.jsonl" for k in range(3)]
    indexes = []
    for k in range(3):
        part = [
            json.loads(line) for line in stored[f"/out/part-0000{k}-of-00003.jsonl"].splitlines()
        ]
        assert [line["index"] for line in part] == list(range(k, 101, 3))
        indexes += [line["index"] for line in part]
    assert sorted(indexes) == list(range(101))
    reports = [json.loads((tmp_path / f"r{k}.json").read_text()) for k in range(3)]
    assert sum(r["processed"] for r in reports) == 101
    assert sum(r["failed"] for r in reports) == 1
    bad = batch(url, "--input", str(items), "--output", prefix, "--shard", "3/3")
    assert bad.returncode == 3 and "--shard '3/3': expected K/N with 0 <= K < N" in bad.stderr


def test_items_from_stdin(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    lines = "".join(json.dumps({"text": f"piped {i}"}) + "\n" for i in range(20))
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "penstock.cli", "batch", url, "--input", "-"]
    result = subprocess.run(
        [*command, "--output", str(output), "--progress", "none"],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line["output"]["text"] for line in records(output)][-1] == "PIPED 19"


def test_a_shard_resumes_from_its_checkpoint(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    items = write_items(tmp_path / "in.jsonl", 101)
    output = tmp_path / "shard.jsonl"
    args = [url, "--input", str(items), "--output", str(output), "--shard", "0/3"]
    batch(*args, check_rc=0)
    whole = output.read_bytes()
    lines = whole.splitlines(keepends=True)
    assert [json.loads(line)["index"] for line in lines] == list(range(0, 101, 3))
    # Killed after 20 of its 34 records were durable: the checkpoint says so, the rest is torn.
    checkpoint = tmp_path / "shard.jsonl.checkpoint"
    state = json.loads(checkpoint.read_text())
    kept = b"".join(lines[:20])
    state.update(done=20, bytes=len(kept), complete=False)
    checkpoint.write_text(json.dumps(state))
    output.write_bytes(kept + lines[20][:7])
    report = tmp_path / "report.json"
    batch(*args, "--report", str(report), check_rc=0)
    assert output.read_bytes() == whole
    assert json.loads(report.read_text())["resumed_after"] == 20
    # Killed after its last record (line 100 of 101) was durable, before it said complete:
    # 34 x 3 = 102 lines are more than the input has, and it resumes all the same.
    state.update(done=34, bytes=len(whole), complete=False)
    checkpoint.write_text(json.dumps(state))
    batch(*args, check_rc=0)
    assert output.read_bytes() == whole
