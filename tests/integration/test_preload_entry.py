"""Integration tests: ``penstock preload`` run as a process, the way the init container runs."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ENTRY = "import sys; from penstock.preload import main; sys.exit(main(sys.argv[1:]))"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_PRELOAD_")}
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 serving a temporary directory."""
    root = tmp_path / "site"
    root.mkdir()
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_success_prints_one_line_per_step(site: tuple[str, Path], tmp_path: Path) -> None:
    url, root = site
    (root / "model.bin").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    dest = tmp_path / "models"
    proc = run("--uri", f"{url}/model.bin", "--dest", str(dest), "--sha256", digest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"fetching {url}/model.bin into {dest}"
    assert lines[1].startswith("downloaded 7 B in ")
    assert lines[2] == f"sha256 verified: {digest}"
    assert lines[3] == f"installed {dest / 'model.bin'}"
    assert (dest / "model.bin").read_bytes() == b"weights"

    again = run("--uri", f"{url}/model.bin", "--dest", str(dest), "--sha256", digest)
    assert again.returncode == 0
    assert again.stderr == (
        f"{dest} already holds {url}/model.bin (1 file re-verified by sha256): skipping the download\n"
    )


def test_configured_through_the_environment(site: tuple[str, Path], tmp_path: Path) -> None:
    url, root = site
    (root / "model.bin").write_bytes(b"weights")
    proc = run(
        env={
            "PENSTOCK_PRELOAD_URI": f"{url}/model.bin",
            "PENSTOCK_PRELOAD_DEST": str(tmp_path / "models"),
            "PENSTOCK_PRELOAD_SHA256": hashlib.sha256(b"weights").hexdigest(),
            "PENSTOCK_PRELOAD_TIMEOUT_SECONDS": "60",
        }
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models" / "model.bin").exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "404",
            "error: fetching http://127.0.0.1:{port}/missing.bin failed: HTTP 404 File not found",
        ),
        ("digest", "error: sha256 mismatch for http://127.0.0.1:{port}/model.bin: expected"),
        ("scheme", "error: model URI 'gs://bucket/model.bin' has unsupported scheme"),
        ("usage", "error: no model URI given: pass --uri or set PENSTOCK_PRELOAD_URI"),
        ("sha", "error: PENSTOCK_PRELOAD_SHA256 'not-a-digest' is not a SHA-256 digest"),
        ("timeout", "error: PENSTOCK_PRELOAD_TIMEOUT_SECONDS 'soon' is not a positive number"),
    ],
)
def test_failures_exit_1_with_one_error_line_and_no_traceback(
    site: tuple[str, Path], tmp_path: Path, case: str, expected: str
) -> None:
    url, root = site
    (root / "model.bin").write_bytes(b"weights")
    dest = tmp_path / "models"
    args = {
        "404": ["--uri", f"{url}/missing.bin", "--dest", str(dest)],
        "digest": ["--uri", f"{url}/model.bin", "--dest", str(dest), "--sha256", "0" * 64],
        "scheme": ["--uri", "gs://bucket/model.bin", "--dest", str(dest)],
        "usage": ["--dest", str(dest)],
        "sha": ["--uri", f"{url}/model.bin", "--dest", str(dest)],
        "timeout": ["--uri", f"{url}/model.bin", "--dest", str(dest)],
    }[case]
    env = {
        "sha": {"PENSTOCK_PRELOAD_SHA256": "not-a-digest"},
        "timeout": {"PENSTOCK_PRELOAD_TIMEOUT_SECONDS": "soon"},
    }.get(case, {})
    proc = run(*args, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, proc.stderr
    assert error_lines[0].startswith(expected.format(port=url.rsplit(":", 1)[1]))
    assert not dest.exists() or list(dest.iterdir()) == []


class StallingHandler(QuietHandler):
    """Declares a large body, sends a little of it, then hangs until the client leaves."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        self.wfile.write(b"x" * 64 * 1024)
        self.wfile.flush()
        self.rfile.read(1)  # returns when the client closes the connection


def test_sigterm_removes_temporary_files(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StallingHandler)
    httpd.daemon_threads = True
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    dest = tmp_path / "models"
    url = f"http://127.0.0.1:{httpd.server_address[1]}/model.bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_PRELOAD_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "--uri", url, "--dest", str(dest)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("fetching ")
        # Wait until the temporary file has received data, then stop the container.
        for _ in range(200):
            parts = [p for p in dest.iterdir() if p.name.endswith(".part")]
            if parts and parts[0].stat().st_size > 0:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the download never started")
        proc.terminate()
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        httpd.shutdown()
        httpd.server_close()
    assert rest.splitlines()[-1].startswith("error: terminated (SIGTERM)"), rest
    assert "Traceback" not in rest
    assert list(dest.iterdir()) == []
