"""nginx as the reference hop of the benches (Debian's package: apt-get install nginx-light).

One worker process, ``proxy_pass`` to a stage with upstream keep-alive (HTTP/1.1, no
``Connection`` header forwarded, access log off): the cheapest well-known reverse proxy hop,
measured in the same run as ours. Also a static "stage" that answers from nginx itself, for
capacity runs where the stage behind must not be the bottleneck.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from procs import process

STATIC_ANSWER = '{"echo": {"run": 1, "i": 0}}'


def available() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def _binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _config(root: Path, listen: int, upstreams: str, locations: str) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  {upstreams}
  server {{
    listen 127.0.0.1:{listen};
    {locations}
  }}
}}
"""


_PROXY = 'proxy_http_version 1.1; proxy_set_header Connection "";'


@contextmanager
def nginx(
    listen: int, *, upstream_port: int | None = None, routes: Mapping[str, int] | None = None
) -> Iterator[int]:
    """nginx on 127.0.0.1:``listen``: proxying every path to ``upstream_port``, or each path
    prefix of ``routes`` (``/a/`` -> port, the prefix stripped) to its port, with keep-alive;
    with neither, answering :data:`STATIC_ANSWER` itself. Yields the worker's pid (whose CPU
    time is the hop's)."""
    upstreams, locations = "", ""
    if upstream_port is not None:
        routes = {"/": upstream_port}
    for number, (prefix, port) in enumerate((routes or {}).items()):
        upstreams += f"upstream u{number} {{ server 127.0.0.1:{port}; keepalive 64; }}\n"
        locations += f"location {prefix} {{ proxy_pass http://u{number}/; {_PROXY} }}\n"
    if not locations:
        answer = STATIC_ANSWER.replace('"', '\\"')
        locations = f'location / {{ default_type application/json; return 200 "{answer}"; }}'
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        root = Path(tmp)
        (root / "nginx.conf").write_text(_config(root, listen, upstreams, locations))
        with process([_binary(), "-c", str(root / "nginx.conf"), "-p", str(root)]) as proc:
            yield _worker_of(proc.pid)


def _worker_of(master: int, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    children = Path(f"/proc/{master}/task/{master}/children")
    while time.monotonic() < deadline:
        try:
            found = children.read_text().split()
        except OSError:
            found = []
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise SystemExit("bench: nginx started no worker (see its error.log)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
