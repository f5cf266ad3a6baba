"""penstock analyze on bad input: one short error line and exit 1 (input) or 2 (options), never a
traceback; --wait waits for a router that is not up yet."""

from __future__ import annotations

import copy
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penstock.dev.analyze import main
from penstock.errors import MAX_MESSAGE
from tests.support import free_port
from tests.unit.test_analyze import RECORDS


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(("waiting", "collected"))]
    if code:
        assert len(lines) == 1, err
        assert lines[0].startswith("penstock analyze: error: ")
        assert len(lines[0]) <= MAX_MESSAGE + 200
    return code, err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "profile",
                    "stages",
                    "name",
                    "start_ms",
                    "end_ms",
                    "cache",
                    "critical_path",
                    "total_ms",
                    "request",
                    "x",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=20,
)
PATHS = [
    ("profile",),
    ("profile", "stages"),
    ("profile", "stages", 0),
    ("profile", "stages", 0, "name"),
    ("profile", "stages", 0, "start_ms"),
    ("profile", "stages", 1, "end_ms"),
    ("profile", "stages", 2, "cache"),
    ("profile", "critical_path"),
    ("profile", "critical_path", 0),
    ("profile", "total_ms"),
    ("request",),
]


@given(st.lists(st.one_of(JSON, st.tuples(st.sampled_from(PATHS), JSON)), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_malformed_profiles_give_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[Any]
) -> None:
    out = []
    for item in lines:
        if isinstance(item, tuple):
            path, value = item
            record = copy.deepcopy(RECORDS[0])
            node: Any = record
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            item = record
        out.append(json.dumps(item))
    profiles = tmp_path / "p.jsonl"
    profiles.write_text("\n".join(out) + "\n")
    code, _ = run(capsys, str(profiles))
    assert code in (0, 1)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe\x00{}", "must be UTF-8 text (byte 0xff at offset 0"),
        (b"[" * 100_000, "nested too deeply"),
        (
            b'{"profile": {"stages": [{"name": "a", "start_ms": 5, "end_ms": 1}]}}',
            "ends before it starts",
        ),
        (
            b'{"profile": {"stages": [{"name": "a", "start_ms": NaN, "end_ms": 1}]}}',
            "finite numbers",
        ),
        (b'{"profile": {"stages": [], "critical_path": 5}}', "critical_path must be a list"),
        (b'{"profile": {"stages": ["a"]}}', "profile.stages[0] must be an object"),
        (b"", "no profiles"),
    ],
)
def test_bad_profile_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    code, err = run(capsys, str(path))
    assert code == 1
    assert needle in err and str(path) in err


def test_missing_or_binary_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles = tmp_path / "p.jsonl"
    profiles.write_text(json.dumps(RECORDS[0]) + "\n")
    assert run(capsys, str(tmp_path / "missing.jsonl"))[0] == 1
    binary = tmp_path / "body.bin"
    binary.write_bytes(b"\x00\xff\x10")
    code, err = run(capsys, "--url", "http://127.0.0.1:9/", "--body", str(binary))
    assert code == 1 and "must be UTF-8 text" in err
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_bytes(b"\x89PNG\r\n")
    code, err = run(capsys, str(profiles), "--pipeline", str(pipeline))
    assert code == 1 and "not UTF-8 text" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "give either FILE or --url"),
        (["p.jsonl", "--url", "http://127.0.0.1:9/"], "give either FILE or --url"),
        (["--url", "http://127.0.0.1:9/"], "--url needs --body"),
        (["p.jsonl", "--requests", "0"], "--requests must be 1 to"),
        (["p.jsonl", "--requests", "1000000000"], "--requests must be 1 to"),
        (["p.jsonl", "--timeout", "nan"], "--timeout must be a positive"),
        (["p.jsonl", "--timeout", "-1"], "--timeout must be a positive"),
        (["p.jsonl", "--wait", "5"], "--wait needs --url"),
        (
            ["--url", "http://127.0.0.1:9/", "--body", "b", "--wait", "-1"],
            "--wait must be 0 or more",
        ),
        (["--url", "ftp://127.0.0.1/", "--body", "BODY"], "--url must be an http(s) URL"),
        (["--url", "127.0.0.1:8000", "--body", "BODY"], "--url must be an http(s) URL"),
        (
            ["p.jsonl", "--metrics-url", "file:///etc/passwd"],
            "--metrics-url must be an http(s) URL",
        ),
    ],
)
def test_option_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    body = tmp_path / "body.json"
    body.write_text("{}")
    code, err = run(capsys, *[str(body) if a == "BODY" else a for a in args])
    assert code == 2, err
    assert needle in err


# ----------------------------------------------------------------- live servers on 127.0.0.1


def serve(port: int, handler: Callable[[http.server.BaseHTTPRequestHandler], None]) -> http.server.ThreadingHTTPServer:  # fmt: skip
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler(self)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            handler(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def answer(status: int, body: bytes, kind: str = "application/json") -> Callable[[Any], None]:
    def handle(request: Any) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return handle


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    return path


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_text('{"text": "hi"}')
    return path


@pytest.fixture
def servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("handler", "needle"),
    [
        (answer(200, b"<html><body>Grafana</body></html>", "text/html"), "not Prometheus metrics"),
        (answer(200, b'{"status": "success", "data": []}'), "not Prometheus metrics"),
        (answer(404, b"not found"), "cannot read metrics from"),
        (answer(200, b"\x00\xff\xfe garbage {{{ }}}"), "not Prometheus metrics"),
    ],
)
def test_a_metrics_url_that_is_not_prometheus(
    profiles: Path,
    servers: list[Any],
    capsys: pytest.CaptureFixture[str],
    handler: Callable[[Any], None],
    needle: str,
) -> None:
    port = free_port()
    servers.append(serve(port, handler))
    code, err = run(capsys, str(profiles), "--metrics-url", f"http://127.0.0.1:{port}/metrics")
    assert code == 1, err
    assert needle in err


def test_a_closed_port_is_one_line_with_a_hint(body: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    url = f"http://127.0.0.1:{free_port()}/"
    code, err = run(capsys, "--url", url, "--body", str(body), "--requests", "1")
    assert code == 1
    assert f"cannot reach {url}" in err and "--wait SECONDS waits for it" in err


def test_wait_until_the_router_is_up(
    body: Path, servers: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    timer = threading.Timer(1.0, lambda: servers.append(serve(port, answer(200, json.dumps(RECORDS[0]).encode()))))  # fmt: skip
    timer.start()
    try:
        started = time.monotonic()
        code, err = run(
            capsys, "--url", url, "--body", str(body), "--requests", "3", "--wait", "20"
        )
    finally:
        timer.join()
    assert code == 0, err
    assert f"waiting up to 20 s for {url}" in err
    assert 0.9 < time.monotonic() - started < 15


def test_wait_while_the_router_answers_503_then_gives_up(
    body: Path, servers: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    servers.append(serve(port, answer(503, b'{"error": "not ready"}')))
    url = f"http://127.0.0.1:{port}/"
    code, err = run(capsys, "--url", url, "--body", str(body), "--requests", "1", "--wait", "1.5")
    assert code == 1
    assert "answered HTTP 503" in err and "after waiting 1.5 s" in err


def test_an_answer_without_a_profile(
    body: Path, servers: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    servers.append(serve(port, answer(200, b"data: streamed\n\n", "text/event-stream")))
    code, err = run(capsys, "--url", f"http://127.0.0.1:{port}/", "--body", str(body))
    assert code == 1 and "not JSON" in err
