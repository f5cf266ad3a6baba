"""What many tests need, defined once: free ports, the tools they run (one policy: a missing
tool fails the test, naming how to get it; CI installs every one), and a real redis-server."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
# How to get each tool the tests run (Debian packages via .ci/run, the rest via `make tools`).
HOW = {
    "redis-server": "apt-get install redis-server",
    "openssl": "apt-get install openssl",
}


_HANDED_OUT: set[int] = set()
# Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 here): a port
# from that range can be taken between our check and the server's bind by any process's
# outgoing connection (a CI run lost the router's admin port that way).
_LOW, _HIGH = 20000, 32000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the ephemeral range, and never one
    this process handed out before (two servers told the same port would collide)."""
    while True:
        port = random.randrange(_LOW, _HIGH)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def tool(name: str) -> str:
    """The path of a tool from bin/ (built by `make tools`) or $PATH; fails when missing."""
    built = BIN / name
    if built.exists():
        return str(built)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {HOW.get(name, 'run `make tools`')}")
    return found


class RedisServer:
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
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def keys(self) -> list[bytes]:
        return sorted(self.client.keys("penstock:cache:*"))  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.kill()
        self.client.close()
