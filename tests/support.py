"""What many tests need, defined once: free ports and the tools they run (from tests/harness.py:
one policy, a missing tool fails the test naming how to get it; CI installs every one), and
real servers: redis-server, and a stage as a process of its own."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import yaml

from tests.harness import free_port, tool

__all__ = [
    "RedisServer",
    "ScriptServer",
    "free_port",
    "pipeline_examples",
    "tool",
    "wait_http",
]


class _LocalServer:
    """A server process of this test's own: started, waited for, killed."""

    process: subprocess.Popen[bytes]

    def _wait_until_up(
        self, probe: Callable[[], object], errors: tuple[type[Exception], ...], what: str
    ) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe()
                return
            except errors:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a test may have stopped it
        self.kill()


class RedisServer(_LocalServer):
    """A redis-server process of its own on a free loopback port, nothing persisted."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                tool("redis-server"),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", *extra),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        self._wait_until_up(self.client.ping, (redis.ConnectionError,), "redis-server")

    def keys(self) -> list[bytes]:
        return sorted(self.client.keys("penstock:cache:*"))  # type: ignore[arg-type]

    def close(self) -> None:
        super().close()
        self.client.close()


class RedisClusterServer:
    """A Redis Cluster of three masters of its own on free loopback ports (no replicas,
    nothing persisted); ``url`` names one node, the client discovers the rest."""

    def __init__(self, password: str = "cluster-password") -> None:
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="penstock-redis-cluster-"))
        self.ports = [free_port() for _ in range(3)]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.processes = [
            subprocess.Popen(
                [
                    tool("redis-server"),
                    *("--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                    *("--requirepass", password, "--masterauth", password),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.dir)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in self.ports
        ]
        for port in self.ports:
            node = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
            deadline = time.monotonic() + 10
            while True:
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.close()
                        raise RuntimeError("redis-server (cluster node) did not start") from None
                    time.sleep(0.02)
            node.close()
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        created = subprocess.run(
            [tool("redis-cli"), "-a", password, "--no-auth-warning", *create],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
        self.client = redis.RedisCluster(
            host="127.0.0.1", port=self.ports[0], password=password, socket_timeout=2
        )
        deadline = time.monotonic() + 20
        while self.client.cluster_info().get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
            assert time.monotonic() < deadline, "the cluster never became ok"
            time.sleep(0.1)

    def keys(self) -> list[bytes]:
        found: list[bytes] = []
        for port in self.ports:
            node = redis.Redis(host="127.0.0.1", port=port, password=self.password)
            found += node.keys("penstock:cache:*")  # type: ignore[operator]
            node.close()
        return sorted(found)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class MemcachedServer(_LocalServer):
    """A memcached process of its own on a free loopback port (64 MB, no UDP)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"memcached://127.0.0.1:{self.port}"
        user = ["-u", "root"] if os.geteuid() == 0 else []  # memcached refuses root otherwise
        self.process = subprocess.Popen(
            [
                tool("memcached"),
                "-l",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "0",
                "-m",
                "64",
                *user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_up(lambda: self.command(b"version"), (OSError,), "memcached")

    def command(self, line: bytes) -> bytes:
        """One text-protocol command; the server's first reply line(s)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(line + b"\r\n")
            return sock.recv(1 << 20)

    def get(self, key: str) -> bytes | None:
        reply = self.command(b"get " + key.encode())
        if reply.startswith(b"END"):
            return None
        header, _, rest = reply.partition(b"\r\n")
        return rest[: int(header.split()[3])]

    def set(self, key: str, value: bytes, ttl: int = 60) -> None:
        line = b"set %s 0 %d %d\r\n%s" % (key.encode(), ttl, len(value), value)
        assert self.command(line).startswith(b"STORED"), key


def wait_http(port: int, path: str, timeout: float = 20.0) -> None:
    """Wait until GET 127.0.0.1:port/path answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        assert time.monotonic() < deadline, f"127.0.0.1:{port}{path} never answered 200"
        time.sleep(0.05)


class ScriptServer:
    """A server (a stage, most often) as a Python process of its own, ready when GET `health`
    answers 200: `code` is run with its port as sys.argv[1], or `argv` with `--port PORT`."""

    def __init__(
        self,
        code: str = "",
        health: str = "/healthz",
        *,
        argv: list[str] | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-c", code, str(self.port)]
        if argv is not None:
            command = [*argv, "--port", str(self.port)]
        self.process = subprocess.Popen(command)
        try:
            wait_http(self.port, health, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)


def embed_stage() -> ScriptServer:
    """The RAG example's embed stage (all-MiniLM-L6-v2 in numpy, one BLAS thread): POST
    {"text"} answers {"embedding": [384 floats]}."""
    app = Path(__file__).resolve().parents[1] / "examples" / "rag" / "embed" / "app.py"
    return ScriptServer(argv=[sys.executable, str(app), "--threads", "1"], timeout=120)


def pipeline_examples() -> list[Path]:
    """The example files that hold Pipelines (examples/ also holds a PipelineRun)."""
    root = Path(__file__).resolve().parents[1] / "examples"
    return [
        path
        for path in sorted(root.rglob("*.yaml"))
        if (yaml.safe_load(path.read_text()) or {}).get("kind") == "Pipeline"
    ]
