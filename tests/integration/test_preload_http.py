"""Integration tests: preloading over HTTP from a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from penstock.preload import PreloadError, preload

pytestmark = pytest.mark.integration


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    send_bytes: int | None = None  # send only this many body bytes, then close
    chunked: bool = False  # no Content-Length, Transfer-Encoding: chunked
    stall: bool = False  # send headers and a little, then hang until released
    delay: float = 0.0  # seconds to wait before answering


class ModelServer:
    """A tiny HTTP/1.1 server with scripted misbehaviour, counting the requests it gets."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                time.sleep(server.routes.get(self.path, Route()).delay)
                route = server.routes.get(self.path.split("?")[0], Route(status=404))
                self.send_response(route.status)
                self.send_header("Connection", "close")
                body = route.body if route.status < 400 else b"nope\n"
                if route.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 1000):
                        part = body[i : i + 1000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if route.stall:
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                self.wfile.write(body[: route.send_bytes])
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return sum(1 for p in self.requests if p.split("?")[0] == path)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    srv = ModelServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def leftovers(dest: Path) -> list[str]:
    """Entries the preloader must never leave behind."""
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(".penstock-preload-"))


WEIGHTS = os.urandom(3 * 1024 * 1024 + 123)
MODEL_DIR = {
    "minilm/config.json": b'{"hidden": 384}',
    "minilm/tokenizer/vocab.txt": b"[PAD]\n[CLS]\n",
    "minilm/model.safetensors": os.urandom(700_000),
}


def test_good_file_lands_at_its_basename(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m/weights.bin"] = Route(WEIGHTS)
    dest = tmp_path / "models"
    result = preload(server.url("/m/weights.bin"), dest, sha(WEIGHTS))
    assert result == dest / "weights.bin"
    assert result.read_bytes() == WEIGHTS
    assert sorted(p.name for p in dest.iterdir()) == [".penstock-preload.json", "weights.bin"]
    assert (result.stat().st_mode & 0o777) == 0o644


def test_rerun_skips_without_a_request(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m/weights.bin"] = Route(WEIGHTS)
    url = server.url("/m/weights.bin")
    preload(url, tmp_path, sha(WEIGHTS))
    assert server.count("/m/weights.bin") == 1
    assert preload(url, tmp_path, sha(WEIGHTS)) == tmp_path / "weights.bin"
    assert preload(url, tmp_path, None) == tmp_path / "weights.bin"
    assert server.count("/m/weights.bin") == 1


def test_tar_gz_model_directory(server: ModelServer, tmp_path: Path) -> None:
    archive = make_tgz(MODEL_DIR)
    server.routes["/minilm.tar.gz"] = Route(archive)
    result = preload(server.url("/minilm.tar.gz"), tmp_path, sha(archive))
    assert result == tmp_path
    for name, data in MODEL_DIR.items():
        assert (tmp_path / name).read_bytes() == data
    assert not (tmp_path / "minilm.tar.gz").exists()
    assert leftovers(tmp_path) == []
    # again: skipped, no second request
    preload(server.url("/minilm.tar.gz"), tmp_path, sha(archive))
    assert server.count("/minilm.tar.gz") == 1


def test_tar_detected_by_content(server: ModelServer, tmp_path: Path) -> None:
    archive = make_tgz(MODEL_DIR)
    server.routes["/download"] = Route(archive)
    assert preload(server.url("/download?id=7"), tmp_path, None) == tmp_path
    assert (tmp_path / "minilm" / "config.json").exists()


def test_chunked_response_without_content_length(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m.bin"] = Route(WEIGHTS[:50_000], chunked=True)
    assert (
        preload(server.url("/m.bin"), tmp_path, sha(WEIGHTS[:50_000])).read_bytes()
        == WEIGHTS[:50_000]
    )


def test_body_cut_short_is_an_error_and_leaves_nothing(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m/weights.bin"] = Route(WEIGHTS, send_bytes=len(WEIGHTS) // 2)
    with pytest.raises(
        PreloadError, match=r"weights\.bin was cut short: received \d+ of the"
    ) as info:
        preload(server.url("/m/weights.bin"), tmp_path, None)  # even without a digest
    assert str(len(WEIGHTS)) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_bytes_fail_the_digest_and_leave_nothing(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m/weights.bin"] = Route(b"tampered" + WEIGHTS[8:])
    with pytest.raises(PreloadError, match=r"sha256 mismatch for http://127\.0\.0\.1") as info:
        preload(server.url("/m/weights.bin"), tmp_path, sha(WEIGHTS))
    assert sha(WEIGHTS) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_archive_digest_leaves_nothing(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/minilm.tgz"] = Route(make_tgz(MODEL_DIR))
    with pytest.raises(PreloadError, match="sha256 mismatch"):
        preload(server.url("/minilm.tgz"), tmp_path, "0" * 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "Not Found"), (500, "Internal Server Error"), (403, "Forbidden")]
)
def test_http_error_status(server: ModelServer, tmp_path: Path, status: int, reason: str) -> None:
    server.routes["/m.bin"] = Route(status=status)
    with pytest.raises(
        PreloadError,
        match=f"fetching http://127.0.0.1:{server.port}/m.bin failed: HTTP {status} {reason}",
    ):
        preload(server.url("/m.bin"), tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_stalled_download_times_out(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m.bin"] = Route(WEIGHTS, stall=True)
    started = time.monotonic()
    with pytest.raises(
        PreloadError, match=r"fetching http://127\.0\.0\.1:\d+/m\.bin timed out after 1s"
    ):
        preload(server.url("/m.bin"), tmp_path, None, timeout_seconds=1)
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PreloadError, match=f"could not connect to 127.0.0.1:{port}"):
        preload(f"http://127.0.0.1:{port}/m.bin", tmp_path, None, timeout_seconds=10)
    assert list(tmp_path.iterdir()) == []


def test_unsafe_archive_is_refused_and_leaves_nothing(server: ModelServer, tmp_path: Path) -> None:
    archive = make_tgz({"ok.txt": b"fine", "../escape.txt": b"evil"})
    server.routes["/evil.tar.gz"] = Route(archive)
    dest = tmp_path / "dest"
    with pytest.raises(
        PreloadError, match=r"archive http://.*evil\.tar\.gz has an entry with a '\.\.' component"
    ):
        preload(server.url("/evil.tar.gz"), dest, sha(archive))
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_failed_update_keeps_the_working_model(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/v1.bin"] = Route(b"v1")
    preload(server.url("/v1.bin"), tmp_path, sha(b"v1"))
    server.routes["/v2.bin"] = Route(b"v2-and-more", send_bytes=3)
    with pytest.raises(PreloadError, match="cut short"):
        preload(server.url("/v2.bin"), tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".penstock-preload.json", "v1.bin"]
    preload(server.url("/v1.bin"), tmp_path, sha(b"v1"))  # still recognised: skipped
    assert server.count("/v1.bin") == 1


def test_new_model_replaces_the_previous_one(server: ModelServer, tmp_path: Path) -> None:
    v1 = make_tgz(MODEL_DIR)
    v2 = make_tgz({"minilm/config.json": b"{}", "minilm/model-v2.safetensors": b"w2"})
    server.routes["/v1.tgz"] = Route(v1)
    server.routes["/v2.tgz"] = Route(v2)
    preload(server.url("/v1.tgz"), tmp_path, sha(v1))
    preload(server.url("/v2.tgz"), tmp_path, sha(v2))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [".penstock-preload.json", "minilm/config.json", "minilm/model-v2.safetensors"]
    assert leftovers(tmp_path) == []


def test_changed_digest_or_deleted_file_fetches_again(server: ModelServer, tmp_path: Path) -> None:
    server.routes["/m.bin"] = Route(b"one")
    url = server.url("/m.bin")
    preload(url, tmp_path, None)
    (tmp_path / "m.bin").unlink()
    preload(url, tmp_path, None)
    assert server.count("/m.bin") == 2
    server.routes["/m.bin"] = Route(b"two")
    preload(url, tmp_path, sha(b"two"))
    assert server.count("/m.bin") == 3
    assert (tmp_path / "m.bin").read_bytes() == b"two"


def test_stale_temporary_files_of_a_killed_run_are_removed(
    server: ModelServer, tmp_path: Path
) -> None:
    (tmp_path / ".penstock-preload-abc123.part").write_bytes(b"half a model")
    (tmp_path / ".penstock-preload-def456.d").mkdir()
    server.routes["/m.bin"] = Route(b"model")
    preload(server.url("/m.bin"), tmp_path, sha(b"model"))
    assert leftovers(tmp_path) == []


def test_concurrent_preloads_into_one_volume_fetch_once(
    server: ModelServer, tmp_path: Path
) -> None:
    server.routes["/m.bin"] = Route(WEIGHTS, delay=0.5)
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(preload(server.url("/m.bin"), tmp_path, sha(WEIGHTS)))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [tmp_path / "m.bin"] * 3
    assert server.count("/m.bin") == 1
    assert leftovers(tmp_path) == []
