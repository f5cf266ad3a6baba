"""The harness the e2e tests and the operator benchmark share: the tools they run, free ports,
a real control plane (hack/cluster.sh, or $KUBECONFIG), the real kubectl, and `penstock
operator` as a process. Nothing here fakes the Kubernetes API.

No pytest here, so that bench/ can import it: a failure raises HarnessError, an AssertionError,
which pytest reports as a failed test with its message and a benchmark as a failed phase.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
CLUSTER_SCRIPT = ROOT / "hack" / "cluster.sh"
CRD_FILE = ROOT / "crds" / "pipelines.penstock.dev.yaml"
CRD_FILES = (CRD_FILE, ROOT / "crds" / "pipelineruns.penstock.dev.yaml")
# How to get each tool (Debian packages via .ci/run, the rest via `make tools`).
HOW = {
    "redis-server": "apt-get install redis-server",
    "openssl": "apt-get install openssl",
    "chromium": "apt-get install chromium",
}

T = TypeVar("T")


class HarnessError(AssertionError):
    """A step failed or timed out; the message says which and why."""


def tool(name: str) -> str:
    """The path of a tool from bin/ (built by `make tools`) or $PATH; fails when missing."""
    built = BIN / name
    if built.exists():
        return str(built)
    found = shutil.which(name)
    if found is None:
        raise HarnessError(f"{name} is missing: {HOW.get(name, 'run `make tools`')}")
    return found


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


def wait_for(
    check: Callable[[], T], timeout: float = 60, interval: float = 0.5, what: str = "condition"
) -> T:
    """Poll until check() returns a truthy value; HarnessError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def http_get(url: str, timeout: float = 5) -> bytes | None:
    """The body of a 200 answer, or None (refused, timed out, another status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Cluster:
    """A cluster reached with the real kubectl."""

    kubeconfig: str
    local: bool
    """The local control plane (hack/cluster.sh), not the cluster of $KUBECONFIG."""
    started_here: bool = False
    """This run started the local control plane (and takes it down)."""
    script_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment hack/cluster.sh runs with (its state dir, node count)."""

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [tool("kubectl"), *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=max(timeout, 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise HarnessError(
                f"kubectl {' '.join(args[:3])} ... timed out after {timeout:.0f}s"
            ) from error
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str) -> Any | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[Any]:
        args = ["get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        items: list[Any] = self.json(*args)["items"]
        return items

    def apply(
        self, manifest: str | dict[str, Any], namespace: str
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-n", namespace, "-f", "-", stdin=text, check=False)

    def install_crd(self, timeout: float = 60) -> str:
        """Apply the Pipeline and PipelineRun CRDs and wait until their schemas are served."""
        for path in CRD_FILES:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        # Polled rather than `kubectl wait`, which errors while .status.conditions is unset.
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        for kind in ("pipeline", "pipelinerun"):
            crd = f"{kind}s.penstock.dev"

            def established(crd: str = crd) -> bool:
                args = ("get", "crd", crd, "-o", f"jsonpath={jsonpath}")
                return self.kubectl(*args, check=False).stdout == "True"

            def explained(kind: str = kind) -> bool:
                return self.kubectl("explain", f"{kind}.spec", check=False).returncode == 0

            wait_for(established, timeout=timeout, what=f"the {crd} CRD Established")
            # The OpenAPI document (kubectl explain, field validation) is published later.
            wait_for(explained, timeout=timeout, what=f"the {kind} schema in the OpenAPI")
        # kubectl's discovery cache (~/.kube/cache) may predate the CRDs: api-resources
        # refreshes it, else `kubectl apply` of a new kind fails with "no matches for kind".
        wait_for(
            lambda: (
                "pipelineruns"
                in self.kubectl("api-resources", "--api-group=penstock.dev", check=False).stdout
            ),
            timeout=timeout,
            what="the penstock.dev resources in kubectl's discovery",
        )
        return "pipelines.penstock.dev"


def _cluster_script(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(
            f"hack/cluster.sh {' '.join(args)} failed:\n{result.stderr.strip()[-3000:]}"
        )
    return result.stdout


@contextlib.contextmanager
def control_plane(nodes: int | None = None, keep_variable: str = "") -> Iterator[Cluster]:
    """The cluster of $KUBECONFIG, or the local control plane (started when down, with at
    least `nodes` kwok nodes, and taken down afterwards unless $keep_variable is 1)."""
    external = os.environ.get("KUBECONFIG")
    if external:
        yield Cluster(kubeconfig=external, local=False)
        return
    env = dict(os.environ)
    if nodes is not None:
        env.setdefault("PENSTOCK_CLUSTER_NODES", str(nodes))
    was_up = (
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "status"], env=env, capture_output=True, check=False
        ).returncode
        == 0
    )
    _cluster_script(env, "up", timeout=900)
    kubeconfig = _cluster_script(env, "env").strip().split("=", 1)[1].strip("'\"")
    try:
        yield Cluster(kubeconfig=kubeconfig, local=True, started_here=not was_up, script_env=env)
    finally:
        if not was_up and not (keep_variable and os.environ.get(keep_variable) == "1"):
            with contextlib.suppress(HarnessError, subprocess.TimeoutExpired):
                _cluster_script(env, "down", timeout=120)


class OperatorProcess:
    """`penstock operator` as a real process against the cluster, logging to a file."""

    def __init__(self, cluster: Cluster, log_dir: Path, name: str = "operator") -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the operator was not started"
        return self.process.pid

    def start(self, *extra_args: str, resync_seconds: float = 5) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.starts += 1
        env = self.cluster.env()
        env.pop("POD_ID", None)  # kopf's peer identity: each process its own
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "penstock.cli",
                    "operator",
                    *("--resync-seconds", str(resync_seconds)),
                    *("--metrics-port", str(self.metrics_port)),
                    *("--health-port", str(self.health_port)),
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def healthy(self) -> bool:
        if not self.alive():
            raise HarnessError(f"the operator exited; log {self.log_path}:\n{self.log_tail()}")
        return http_get(f"http://127.0.0.1:{self.health_port}/healthz") is not None

    def metrics(self) -> str:
        return (http_get(f"http://127.0.0.1:{self.metrics_port}/metrics") or b"").decode()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
