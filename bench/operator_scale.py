"""Benchmark: the Penstock operator against a plain `kubectl apply` of the same objects.

For every size N it measures, on a real control plane (hack/cluster.sh, or $KUBECONFIG):

1. operator: wall time from one server-side `kubectl apply` of N Pipelines (a 5-stage DAG
   each, no cache, no model) into a fresh namespace until every child exists, and until every
   Pipeline has Ready=True;
2. baseline (floor): the same children pre-rendered by `penstock render` (render time not
   included) applied with one server-side `kubectl apply` into another fresh namespace, timed
   until they all exist;
3. the operator's peak RSS (VmHWM of a fresh operator process per size);
4. the write requests the apiserver received on the operator's resources during an idle
   window after every Pipeline is Ready (resync timer firing, nothing to change);
5. the time a spec change of one Pipeline among N takes to reach its Deployment (p50, p99).

It ends with one line per N: operator N=<n> ratio=<x> rss_mb=<y> idle_writes=<z> update_p99_s=<s>

Run: python bench/operator_scale.py [--sizes 10,100,500] [--stages 5] [--idle-seconds 60]
     [--updates 20]
Without $KUBECONFIG it starts the local control plane (hack/cluster.sh; state dir
$PENSTOCK_CLUSTER_DIR) with enough kwok nodes for the pods, and stops it at the end if it
started it. This is a benchmark that prints a table, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the e2e harness, shared with the tests
from tests.harness import (  # noqa: E402
    Cluster,
    HarnessError,
    OperatorProcess,
    control_plane,
)

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=penstock-operator"
PODS_PER_KWOK_NODE = 110  # hack/cluster.sh gives every fake node pods: "110"

# Collection paths of the children, by kind.
CHILD_PATHS: dict[str, str] = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
}
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"

# The idle-write filter: write verbs on (group, resource, subresource) the operator writes.
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"})
OPERATOR_WRITTEN = frozenset(
    {
        ("penstock.dev", "pipelines", ""),
        ("penstock.dev", "pipelines", "status"),
        ("apps", "deployments", ""),
        ("", "services", ""),
        ("autoscaling", "horizontalpodautoscalers", ""),
        ("", "configmaps", ""),
        ("", "secrets", ""),
    }
)
IDLE_FILTER_NOTE = (
    "idle writes = increase of apiserver_request_total over the idle window, verbs "
    "POST/PUT/PATCH/DELETE/APPLY/DELETECOLLECTION, on pipelines (incl. /status), deployments, "
    "services, horizontalpodautoscalers, configmaps, secrets, main resource only except "
    "pipelines/status. Not counted: deployments/status (deployment controller), "
    "horizontalpodautoscalers/status (HPA controller), events (the HPA controller posts them), "
    "leases, nodes, pods. The apiserver metric carries no client identity, so this counts "
    "every writer of those resources in the whole cluster; during the window nothing else "
    "writes them (no leader election, the bench itself only reads)."
)

T = TypeVar("T")


class BenchError(HarnessError):
    """A phase failed or timed out; the message says which and why."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Deadline:
    """A per-phase time budget."""

    def __init__(self, phase: str, seconds: float) -> None:
        self.phase = phase
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def check(self, detail: str) -> None:
        if self.left() <= 0:
            raise BenchError(
                f"phase '{self.phase}' timed out after {self.seconds:.0f}s ({detail}); "
                "raise --timeout or pick smaller --sizes"
            )


def poll(
    deadline: Deadline, interval: float, check: Callable[[], T | None], what: Callable[[], str]
) -> T:
    """Call check() every interval seconds until it returns a value; BenchError at deadline."""
    while True:
        result = check()
        if result is not None:
            return result
        deadline.check(what())
        time.sleep(min(interval, max(deadline.left(), 0.01)))


# ------------------------------------------------------------------ cluster access


class Api:
    """Raw GETs against the apiserver (the official client's transport and credentials)."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self._api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]

    def get(self, path: str, accept: str = "application/json", query: str = "") -> bytes:
        serialized = self._api.param_serialize(
            method="GET",
            resource_path=path + (f"?{query}" if query else ""),
            header_params={"Accept": accept},
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=(5.0, 60.0))
            response.read()
        except client.ApiException as error:
            raise BenchError(f"GET {path}: {error.status} {error.reason}") from error
        except Exception as error:  # urllib3: refused, timeout
            raise BenchError(f"GET {path}: {error}") from error
        data: bytes = response.data or b""
        if not 200 <= response.status < 300:
            raise BenchError(f"GET {path}: HTTP {response.status}: {data[:200]!r}")
        return data

    def json(self, path: str, accept: str = "application/json", query: str = "") -> Any:
        return json.loads(self.get(path, accept, query))

    def merge_patch(self, path: str, patch: dict[str, Any]) -> None:
        serialized = self._api.param_serialize(
            method="PATCH",
            resource_path=path,
            header_params={
                "Accept": "application/json",
                "Content-Type": "application/merge-patch+json",
            },
            body=patch,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=(5.0, 60.0))
            response.read()
        except Exception as error:
            raise BenchError(f"PATCH {path}: {error}") from error
        if not 200 <= response.status < 300:
            raise BenchError(f"PATCH {path}: HTTP {response.status}: {response.data[:200]!r}")

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except BenchError as error:
            if " 404 " in str(error) or "HTTP 404" in str(error):
                return False
            raise
        return True

    def count(self, kind: str, namespace: str) -> int:
        """Objects of kind with the managed-by label in namespace (a metadata-only list)."""
        body = self.json(
            CHILD_PATHS[kind].format(ns=namespace),
            METADATA_LIST,
            f"labelSelector={MANAGED_SELECTOR}",
        )
        return len(body.get("items") or [])


# ------------------------------------------------------------------ workload


def pipeline_doc(name: str, stages: int, cache: bool) -> str:
    """One Pipeline: s0 fans out to s1 and s2, they join in s3, then a chain to the last stage."""
    lines = [
        "apiVersion: penstock.dev/v1alpha1",
        "kind: Pipeline",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  costCenter: bench",
        "  team: perf",
        f"  output: s{stages - 1}",
        "  stages:",
    ]
    for i in range(stages):
        lines += [f"    - name: s{i}", "      image: registry.example/bench-stage:1.0"]
        if i == 1 or i == 2:
            lines.append("      dependsOn: [s0]")
        elif i == 3 and stages > 3:
            lines.append("      dependsOn: [s1, s2]")
        elif i > 0:
            lines.append(f"      dependsOn: [s{i - 1}]")
        if cache:
            lines.append("      cache: {enabled: true}")
    return "\n".join(lines) + "\n"


def pipelines_yaml(size: int, stages: int, cache: bool) -> str:
    return "---\n".join(pipeline_doc(f"p{i:04d}", stages, cache) for i in range(size))


def render(
    pipelines_file: Path, namespace: str, out: Path, timeout: float
) -> tuple[float, Counter[str]]:
    """`penstock render` into out; (seconds, expected objects per kind)."""
    # The operator creates each cache Secret; the direct apply needs them rendered too.
    password = out.with_name("cache-password")
    password.write_text("penstock-bench\n")
    started = time.monotonic()
    with out.open("w") as sink:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "penstock.cli",
                "render",
                str(pipelines_file),
                "--namespace",
                namespace,
                "--cache-password-file",
                str(password),
            ],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(f"penstock render failed: {result.stderr.strip()[-2000:]}")
    kinds: Counter[str] = Counter(
        match.group(1) for match in re.finditer(r"^kind: (\w+)$", out.read_text(), re.MULTILINE)
    )
    unknown = set(kinds) - set(CHILD_PATHS)
    if unknown:
        raise BenchError(f"penstock render produced kinds this bench does not count: {unknown}")
    return seconds, kinds


def pods_per_pipeline(stages: int, cache: bool, work: Path, timeout: float) -> tuple[int, str]:
    """Pods one Pipeline runs (HPA minReplicas, else replicas, per Deployment) and a summary
    of its children, from `penstock render` of one sample Pipeline."""
    sample = work / "sample-pipeline.yaml"
    sample.write_text(pipeline_doc("sample", stages, cache))
    rendered = work / "sample-rendered.yaml"
    render(sample, "sample", rendered, timeout)
    docs = [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]
    floors = {
        doc["spec"]["scaleTargetRef"]["name"]: int(doc["spec"].get("minReplicas", 1))
        for doc in docs
        if doc["kind"] == "HorizontalPodAutoscaler"
    }
    pods = sum(
        floors.get(doc["metadata"]["name"], int(doc["spec"].get("replicas", 1)))
        for doc in docs
        if doc["kind"] == "Deployment"
    )
    kinds = Counter(doc["kind"] for doc in docs)
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return pods, summary


def operator_revision() -> str:
    """HEAD's operator/ tree plus a digest of uncommitted changes there (the code run)."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    tree = git("rev-parse", "--short", "HEAD:operator").strip() or "?"
    diff = git("diff", "HEAD", "--", "operator/")
    dirty = f"+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    return f"operator/ tree {tree}{dirty} (HEAD {head})"


# ------------------------------------------------------------------ the operator process


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in kB from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Operator(OperatorProcess):
    """A fresh `penstock operator` process (cluster-wide, as deployed by default)."""

    def __init__(self, cluster: Cluster, work: Path, size: int, resync_seconds: float) -> None:
        super().__init__(cluster, work, f"operator-N{size}")
        self.start(resync_seconds=resync_seconds)

    def wait_started(self, deadline: Deadline) -> None:
        poll(deadline, 0.5, lambda: self.healthy() or None, lambda: "operator /healthz")
        # Let the initial listing (children of earlier phases) settle: wait until the process
        # uses under 10% of a CPU for a second.
        previous = cpu_seconds(self.pid)
        while deadline.left() > 0:
            time.sleep(1.0)
            now = cpu_seconds(self.pid)
            if now - previous < 0.1:
                return
            previous = now
        deadline.check("operator still busy after start")

    def reconciles(self) -> Counter[str]:
        """penstock_reconcile_total by result, from the operator's /metrics."""
        counts: Counter[str] = Counter()
        for line in self.metrics().splitlines():
            match = re.match(r'^penstock_reconcile_total\{result="(\w+)"\} ([0-9.e+]+)$', line)
            if match:
                counts[match.group(1)] = int(float(match.group(2)))
        return counts

    def log_summary(self) -> dict[str, int]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return {
            "ERROR": len(re.findall(r" ERROR ", text)),
            "WARNING": len(re.findall(r" WARNING ", text)),
            "Traceback": text.count("Traceback"),
        }


# ------------------------------------------------------------------ apiserver request metrics

METRIC_LINE = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.e+]+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_totals(api: Api) -> Counter[tuple[str, str, str, str]]:
    """apiserver_request_total summed by (verb, group, resource, subresource)."""
    totals: Counter[tuple[str, str, str, str]] = Counter()
    for line in api.get("/metrics", "text/plain").decode().splitlines():
        match = METRIC_LINE.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match.group(1)))
        key = (
            labels.get("verb", ""),
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
        )
        totals[key] += int(float(match.group(2)))
    return totals


def describe(key: tuple[str, str, str, str]) -> str:
    verb, group, resource, subresource = key
    name = f"{resource}.{group}" if group else resource
    return f"{verb} {name}{'/' + subresource if subresource else ''}"


def operator_requests(
    before: Counter[tuple[str, str, str, str]], after: Counter[tuple[str, str, str, str]]
) -> tuple[int, int]:
    """(writes, reads) on the resources the operator writes, between two scrapes."""
    delta = after - before
    ours = {k: v for k, v in delta.items() if (k[1], k[2], k[3]) in OPERATOR_WRITTEN}
    writes = sum(v for k, v in ours.items() if k[0] in WRITE_VERBS)
    reads = sum(v for k, v in ours.items() if k[0] in ("GET", "LIST"))
    return writes, reads


# ------------------------------------------------------------------ one size


@dataclass
class Row:
    size: int
    children_expected: int = 0
    operator_children_s: float | None = None
    operator_ready_s: float | None = None
    direct_apply_s: float | None = None
    direct_available_s: float | None = None
    render_s: float | None = None
    peak_rss_mb: float | None = None
    idle_writes: int | None = None
    idle_write_detail: list[str] = field(default_factory=list)
    idle_other_writes: list[str] = field(default_factory=list)
    idle_reads: int | None = None
    idle_reconciles: Counter[str] = field(default_factory=Counter)
    idle_cpu_percent: float | None = None
    direct_requests: tuple[int, int] | None = None
    operator_requests: tuple[int, int] | None = None
    operator_reconciles: Counter[str] = field(default_factory=Counter)
    log_counts: dict[str, int] = field(default_factory=dict)
    operator_log: str = ""
    namespaces: list[str] = field(default_factory=list)
    cleanup_s: float | None = None
    direct_deleted_s: float | None = None
    update_seconds: list[float] = field(default_factory=list)

    @property
    def update_p99_s(self) -> float | None:
        if not self.update_seconds:
            return None
        ordered = sorted(self.update_seconds)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def machine_line(self) -> str:
        """The one line per size a script reads (``-`` where a figure is missing)."""

        def value(figure: float | int | None, digits: int) -> str:
            return "-" if figure is None else f"{figure:.{digits}f}"

        return (
            f"operator N={self.size} ratio={value(self.ratio, 3)} "
            f"rss_mb={value(self.peak_rss_mb, 1)} idle_writes={value(self.idle_writes, 0)} "
            f"update_p99_s={value(self.update_p99_s, 3)}"
        )

    @property
    def ratio(self) -> float | None:
        if self.operator_children_s is None or not self.direct_apply_s:
            return None
        return self.operator_children_s / self.direct_apply_s


@dataclass
class Options:
    sizes: list[int]
    stages: int
    idle_seconds: float
    resync_seconds: float
    timeout: float
    poll_interval: float
    cache: bool
    work: Path
    updates: int = 20
    children_summary: str = ""


def create_namespace(cluster: Cluster, api: Api, name: str, timeout: float) -> None:
    cluster.kubectl("create", "namespace", name)
    # Pods need the default ServiceAccount; wait for it so neither phase pays for it.
    poll(
        Deadline(f"namespace {name}", timeout),
        0.2,
        lambda: True if api.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default") else None,
        lambda: f"default ServiceAccount in {name}",
    )


def count_children(api: Api, namespace: str, kinds: Counter[str]) -> int:
    return sum(api.count(kind, namespace) for kind in kinds)


def deployments_available(api: Api, namespace: str, expected: int) -> bool:
    """Every managed Deployment has all replicas ready and up to date (server-side Table)."""
    table = api.json(
        CHILD_PATHS["Deployment"].format(ns=namespace), TABLE, f"labelSelector={MANAGED_SELECTOR}"
    )
    columns = [column["name"] for column in table.get("columnDefinitions", [])]
    rows = table.get("rows", [])
    if len(rows) < expected:
        return False
    ready_at, updated_at = columns.index("Ready"), columns.index("Up-to-date")
    for row in rows:
        ready, _, desired = str(row["cells"][ready_at]).partition("/")
        if (
            int(desired) < 1
            or int(ready) < int(desired)
            or int(row["cells"][updated_at]) < int(desired)
        ):
            return False
    return True


def ready_pipelines(api: Api, namespace: str) -> int:
    body = api.json(f"/apis/penstock.dev/v1alpha1/namespaces/{namespace}/pipelines")
    ready = 0
    for item in body.get("items") or []:
        status = item.get("status") or {}
        if status.get("observedGeneration") != item["metadata"].get("generation"):
            continue
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        ):
            ready += 1
    return ready


def run_size(cluster: Cluster, api: Api, options: Options, row: Row, wait_for_gc: bool) -> None:
    """Measure one size into row, then delete its namespaces (with wait_for_gc: wait until
    they are gone). row.namespaces: what it created, for the caller to clean up on failure."""
    size = row.size
    suffix = uuid.uuid4().hex[:5]
    ns_direct, ns_operator = f"bench-{size}-direct-{suffix}", f"bench-{size}-operator-{suffix}"
    pipelines_file = options.work / f"pipelines-{size}.yaml"
    pipelines_file.write_text(pipelines_yaml(size, options.stages, options.cache))
    rendered_file = options.work / f"rendered-{size}.yaml"

    # -- render (not timed as part of the baseline)
    row.render_s, kinds = render(pipelines_file, ns_direct, rendered_file, options.timeout)
    expected = sum(kinds.values())
    row.children_expected = expected
    log(
        f"N={size}: rendered {expected} objects ({dict(kinds)}) in {row.render_s:.1f}s; "
        f"namespaces {ns_direct}, {ns_operator}"
    )
    for name in (ns_direct, ns_operator):
        row.namespaces.append(name)
        create_namespace(cluster, api, name, options.timeout)

    # -- baseline: the floor, one server-side apply of the rendered objects
    deadline = Deadline(f"N={size} direct apply", options.timeout)
    scrape = request_totals(api)
    started = time.monotonic()
    cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        str(rendered_file),
        timeout=deadline.left(),
    )
    last = [0]

    def direct_done() -> float | None:
        last[0] = count_children(api, ns_direct, kinds)
        return time.monotonic() - started if last[0] >= expected else None

    row.direct_apply_s = poll(
        deadline, options.poll_interval, direct_done, lambda: f"{last[0]}/{expected} objects exist"
    )
    row.direct_requests = operator_requests(scrape, request_totals(api))
    log(f"N={size}: direct apply: all {expected} objects exist after {row.direct_apply_s:.1f}s")
    # Wait until its pods serve, so the operator phase does not run on top of this one's pods.
    deployments = kinds["Deployment"]
    row.direct_available_s = poll(
        deadline,
        max(options.poll_interval, 1.0),
        lambda: (
            time.monotonic() - started
            if deployments_available(api, ns_direct, deployments)
            else None
        ),
        lambda: f"the {deployments} directly applied Deployments to become available",
    )
    log(f"N={size}: direct apply: all Deployments available after {row.direct_available_s:.1f}s")
    # The operator phase runs alone: its watches must not see (nor its RSS hold) the directly
    # applied objects, which carry the same labels, nor may their garbage collection overlap.
    row.direct_deleted_s = delete_namespaces(cluster, api, [ns_direct], options.timeout)

    # -- the operator: fresh process per size
    operator = Operator(cluster, options.work, size, options.resync_seconds)
    row.operator_log = str(operator.log_path)
    try:
        operator.wait_started(Deadline(f"N={size} operator start", options.timeout))
        log(f"N={size}: operator started (pid {operator.pid})")
        deadline = Deadline(f"N={size} operator", options.timeout)
        scrape, reconciles = request_totals(api), operator.reconciles()
        started = time.monotonic()
        cluster.kubectl(
            "apply",
            "--server-side",
            "-n",
            ns_operator,
            "-f",
            str(pipelines_file),
            timeout=deadline.left(),
        )
        state = {"children": 0, "ready": 0}

        def operator_done() -> float | None:
            if not operator.alive():
                raise BenchError(
                    f"the operator exited; log: {operator.log_path}\n{operator.log_tail()}"
                )
            now = time.monotonic() - started
            if row.operator_children_s is None:
                state["children"] = count_children(api, ns_operator, kinds)
                if state["children"] >= expected:
                    row.operator_children_s = now
                    log(f"N={size}: operator: all {expected} children exist after {now:.1f}s")
            state["ready"] = ready_pipelines(api, ns_operator)
            if state["ready"] >= size and row.operator_children_s is not None:
                return now
            return None

        row.operator_ready_s = poll(
            deadline,
            options.poll_interval,
            operator_done,
            lambda: (
                f"{state['children']}/{expected} children, {state['ready']}/{size} Pipelines Ready"
            ),
        )
        row.operator_requests = operator_requests(scrape, request_totals(api))
        row.operator_reconciles = operator.reconciles() - reconciles
        log(f"N={size}: operator: all {size} Pipelines Ready after {row.operator_ready_s:.1f}s")

        # -- idle resync: let event-triggered reconciles finish, then count writes
        settle = options.resync_seconds + 5
        log(f"N={size}: settling {settle:.0f}s, then an idle window of {options.idle_seconds:.0f}s")
        time.sleep(settle)
        before, reconciles_before = request_totals(api), operator.reconciles()
        cpu_before = cpu_seconds(operator.pid)
        time.sleep(options.idle_seconds)
        after, reconciles_after = request_totals(api), operator.reconciles()
        cpu_after = cpu_seconds(operator.pid)
        if not operator.alive():
            raise BenchError(f"the operator exited while idle; log: {operator.log_path}")
        delta = after - before  # Counter subtraction keeps positive deltas only
        writes = {k: v for k, v in delta.items() if k[0] in WRITE_VERBS}
        ours = {k: v for k, v in writes.items() if (k[1], k[2], k[3]) in OPERATOR_WRITTEN}
        row.idle_writes = sum(ours.values())
        row.idle_write_detail = [f"{describe(k)}: {v}" for k, v in sorted(ours.items())]
        row.idle_other_writes = [
            f"{describe(k)}: {v}" for k, v in sorted(writes.items()) if k not in ours
        ]
        row.idle_reads = sum(
            v
            for k, v in delta.items()
            if k[0] in ("GET", "LIST") and (k[1], k[2], k[3]) in OPERATOR_WRITTEN
        )
        row.idle_reconciles = reconciles_after - reconciles_before
        row.idle_cpu_percent = 100 * (cpu_after - cpu_before) / options.idle_seconds
        hwm = proc_status(operator.pid).get("VmHWM")
        row.peak_rss_mb = hwm / 1024 if hwm is not None else None
        log(
            f"N={size}: idle: {row.idle_writes} writes, {sum(row.idle_reconciles.values())} "
            f"reconciles, operator CPU {row.idle_cpu_percent:.0f}%, peak RSS {row.peak_rss_mb} MB"
        )
        measure_updates(
            api, options, row, ns_operator, Deadline(f"N={size} updates", options.timeout)
        )
        if row.update_seconds:
            log(
                f"N={size}: {len(row.update_seconds)} spec changes reached their Deployment "
                f"in p50 {sorted(row.update_seconds)[len(row.update_seconds) // 2]:.3f}s, "
                f"p99 {row.update_p99_s:.3f}s"
            )
    finally:
        try:
            if operator.alive():
                # Delete while the operator runs, in case it keeps a finalizer on Pipelines.
                if wait_for_gc:
                    row.cleanup_s = delete_namespaces(cluster, api, row.namespaces, options.timeout)
                else:
                    delete_namespaces(cluster, api, row.namespaces, None)
                    path = f"/apis/penstock.dev/v1alpha1/namespaces/{ns_operator}/pipelines"
                    poll(
                        Deadline(f"N={size} Pipelines deleted", options.timeout),
                        1.0,
                        lambda: True if not api.json(path, METADATA_LIST).get("items") else None,
                        lambda: f"the Pipelines in {ns_operator} to be deleted",
                    )
        except BenchError as error:
            log(f"N={size}: cleanup: {error}")
        finally:
            operator.stop()
            row.log_counts = operator.log_summary()


def measure_updates(
    api: Api, options: Options, row: Row, namespace: str, deadline: Deadline
) -> None:
    """One Pipeline at a time, spread over the N: change its first stage's image and time
    until its Deployment carries it (the spec change reaching its children)."""
    count = min(options.updates, row.size)
    for index in range(count):
        row.update_seconds.append(
            time_update(api, namespace, f"p{index * row.size // count:04d}", index, deadline)
        )


def time_update(api: Api, namespace: str, name: str, index: int, deadline: Deadline) -> float:
    image = f"registry.example/bench-stage:1.{index + 1}"
    path = f"/apis/penstock.dev/v1alpha1/namespaces/{namespace}/pipelines/{name}"
    stages = api.json(path)["spec"]["stages"]
    stages[0]["image"] = image
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-s0"
    started = time.monotonic()
    api.merge_patch(path, {"spec": {"stages": stages}})

    def arrived() -> float | None:
        containers = api.json(deployment)["spec"]["template"]["spec"]["containers"]
        if any(container.get("image") == image for container in containers):
            return time.monotonic() - started
        return None

    return poll(deadline, 0.02, arrived, lambda: f"{name}'s Deployment to run {image}")


def existing_namespaces(api: Api, names: list[str]) -> list[str]:
    return [name for name in names if api.exists(f"/api/v1/namespaces/{name}")]


def delete_namespaces(
    cluster: Cluster, api: Api, names: list[str], wait: float | None
) -> float | None:
    """Delete; with wait, block until they are gone (seconds taken) so the next size starts
    on a quiet cluster."""
    names = existing_namespaces(api, names)
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    if wait is None or not names:
        return None
    log(f"waiting for the garbage collector to remove {', '.join(names)}")
    started = time.monotonic()
    poll(
        Deadline("namespace deletion", wait),
        2.0,
        lambda: True if not existing_namespaces(api, names) else None,
        lambda: f"namespaces {names} to be deleted",
    )
    seconds = time.monotonic() - started
    log(f"namespaces gone after {seconds:.0f}s")
    return seconds


def abandon_namespaces(cluster: Cluster, api: Api, names: list[str], wait: float | None) -> None:
    """Cleanup after a failure, the operator stopped: delete our namespaces and drop the
    operator's finalizer from their Pipelines so they do not hang in Terminating."""
    names = existing_namespaces(api, names)
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        body = api.json(f"/apis/penstock.dev/v1alpha1/namespaces/{name}/pipelines", METADATA_LIST)
        for item in body.get("items") or []:
            if item["metadata"].get("finalizers"):
                cluster.kubectl(
                    "patch",
                    "pipeline",
                    item["metadata"]["name"],
                    "-n",
                    name,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
    delete_namespaces(cluster, api, names, wait)


def check_capacity(api: Api, pods_needed: int) -> None:
    nodes = api.json("/api/v1/nodes").get("items") or []
    capacity = 0
    for node in nodes:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        if ready and not node.get("spec", {}).get("unschedulable"):
            capacity += int(node.get("status", {}).get("allocatable", {}).get("pods", "0"))
    pods = api.json("/api/v1/pods", METADATA_LIST).get("items") or []
    free = capacity - len(pods)
    if free < pods_needed:
        raise BenchError(
            f"the cluster can schedule {free} more pods but the largest size needs {pods_needed} "
            "(one Pod per Deployment replica): Pipelines would never become Ready. "
            "Use a cluster with "
            "more nodes (local control plane: PENSTOCK_CLUSTER_NODES="
            f"{math.ceil((pods_needed + len(pods)) / PODS_PER_KWOK_NODE)} hack/cluster.sh up, "
            "after hack/cluster.sh down) or smaller --sizes"
        )


# ------------------------------------------------------------------ report


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| size | operator children s | operator Ready s | direct apply s | ratio | peak RSS MB "
        "| idle writes | update p99 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.size} | {fmt(row.operator_children_s)} | {fmt(row.operator_ready_s)} "
            f"| {fmt(row.direct_apply_s)} | {fmt(row.ratio, 2)} | {fmt(row.peak_rss_mb, 0)} "
            f"| {'—' if row.idle_writes is None else row.idle_writes} "
            f"| {fmt(row.update_p99_s, 3)} |"
        )
    return "\n".join(lines)


def details(rows: list[Row], options: Options) -> str:
    def requests(value: tuple[int, int] | None) -> str:
        return "—" if value is None else f"{value[0]} / {value[1]}"

    def reconciles(counts: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "0"

    lines = [
        "",
        "Apply phases (requests = apiserver requests on the operator's resources from the "
        "apply until the column's end point, writes / reads; reads include the bench's own "
        "polls, 4-5 per poll; render time is not part of the direct apply):",
        "",
        "| size | objects | render s | direct: requests | direct: Deployments available s "
        "| direct: namespace deleted s | operator to Ready: requests "
        "| operator to Ready: reconciles |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.size} | {row.children_expected} | {fmt(row.render_s)} "
            f"| {requests(row.direct_requests)} | {fmt(row.direct_available_s)} "
            f"| {fmt(row.direct_deleted_s, 0)} "
            f"| {requests(row.operator_requests)} | {reconciles(row.operator_reconciles)} |"
        )
    lines += [
        "",
        "Idle window and operator process:",
        "",
        "| size | idle reconciles | idle reads (GET/LIST) | operator CPU idle "
        "| log ERROR / WARNING / Traceback | operator: namespace deleted s |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for row in rows:
        counts = " / ".join(
            str(row.log_counts.get(k, "—")) for k in ("ERROR", "WARNING", "Traceback")
        )
        cpu = "—" if row.idle_cpu_percent is None else f"{row.idle_cpu_percent:.0f}%"
        idle = "—" if row.idle_writes is None else reconciles(row.idle_reconciles)
        lines.append(
            f"| {row.size} | {idle} | {'—' if row.idle_reads is None else row.idle_reads} "
            f"| {cpu} | {counts} | {fmt(row.cleanup_s, 0)} |"
        )
    lines.append("")
    for row in rows:
        expected = row.size * int(options.idle_seconds // options.resync_seconds)
        done = sum(row.idle_reconciles.values())
        if row.idle_writes is not None and done < expected / 2:
            lines.append(
                f"- WARNING N={row.size}: {done} reconciles in the idle window, expected about "
                f"{expected} (every Pipeline once per {options.resync_seconds:g} s resync): the "
                "resync did not (fully) run, so 'idle writes' does not cover it."
            )
        if row.idle_write_detail:
            lines.append(f"- N={row.size} idle writes: {'; '.join(row.idle_write_detail)}")
        if row.idle_other_writes:
            lines.append(
                f"- N={row.size} other writes in the idle window (not counted): "
                + "; ".join(row.idle_other_writes)
            )
        if row.operator_log:
            lines.append(f"- N={row.size} operator log: {row.operator_log}")
    cache = (
        "cache on every stage (+1 Secret per Pipeline)" if options.cache else "no cache, no model"
    )
    lines += [
        "",
        "Method:",
        f"- workload: N Pipelines of {options.stages} stages (s0 -> s1,s2 -> s3 -> ...), {cache}; "
        f"children per Pipeline (from `penstock render`): {options.children_summary}.",
        "- per size, back to back: the direct apply into a fresh namespace (timed from the "
        "`kubectl apply --server-side` of the `penstock render` output until every object is "
        "listed; render time excluded), then a wait until those Deployments are available, "
        "then that namespace is deleted and waited for; then a fresh operator process "
        "(cluster-wide, as deployed) is started and allowed to settle, and the N Pipelines are "
        "applied into a second fresh namespace (timed until every child exists, and until every "
        "Pipeline has Ready=True for its current generation). That namespace is then deleted "
        "while the operator still runs (in case it keeps a finalizer on Pipelines) and waited "
        "for, so the next size starts on a quiet cluster (after the last size only until its "
        "Pipelines are gone when the bench takes its cluster down)."
        f" Polling every {options.poll_interval}s "
        "with metadata-only lists (label app.kubernetes.io/managed-by=penstock-operator).",
        "- ratio = operator children s / direct apply s.",
        "- peak RSS = VmHWM of that size's fresh operator process, read after its idle window.",
        f"- idle window: {options.idle_seconds:.0f}s, starting resync + 5 s after all are Ready, "
        f"operator --resync-seconds {options.resync_seconds:g}.",
        f"- {IDLE_FILTER_NOTE}",
    ]
    return "\n".join(lines)


def machine_info(api: Api, cluster: Cluster, revision: str) -> str:
    version = api.json("/version")
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    nodes = len(api.json("/api/v1/nodes", METADATA_LIST).get("items") or [])
    now = operator_revision()
    same = now.split(" (HEAD")[0] == revision.split(" (HEAD")[0]
    code = revision if same else f"{revision} at the start, {now} at the end (CHANGED)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    kubeconfig = cluster.kubeconfig if not cluster.started_here else "(started by this run)"
    return "\n".join(
        [
            f"- nproc: {os.cpu_count()} ({cpu_model}), memory {mem_gib:.1f} GiB, "
            f"load average at the end: {load}",
            f"- Kubernetes: {version.get('gitVersion')} ({nodes} nodes), cluster: {kubeconfig}",
            f"- Python {platform.python_version()}, {platform.system()} {platform.release()}, "
            f"operator code: {code}",
        ]
    )


def command_line() -> str:
    env = " ".join(
        f"{k}={shlex.quote(os.environ[k])}"
        for k in ("KUBECONFIG", "PENSTOCK_CLUSTER_DIR", "PENSTOCK_CLUSTER_NODES")
        if k in os.environ
    )
    return (env + " " if env else "") + "python " + shlex.join(sys.argv)


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the Penstock operator against a direct apply of the same objects."
    )
    parser.add_argument("--sizes", default="10,100,500", help="comma-separated Pipeline counts")
    parser.add_argument("--stages", type=int, default=5, help="stages per Pipeline (default 5)")
    parser.add_argument(
        "--idle-seconds", type=float, default=60, help="idle window for counting writes"
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=10, help="the operator's --resync-seconds"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="bound of every phase, seconds (default 900)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument(
        "--updates",
        type=int,
        default=20,
        help="spec changes timed one at a time after the idle window (default 20)",
    )
    parser.add_argument(
        "--cache", action="store_true", help="enable the cache on every stage (adds a Secret)"
    )
    parser.add_argument(
        "--work-dir",
        default="",
        help="where to keep manifests and operator logs (default: a temp dir)",
    )
    args = parser.parse_args(argv)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not args.size_list or any(s < 1 for s in args.size_list):
        parser.error("--sizes needs at least one positive integer")
    if not 1 <= args.stages <= 50:
        parser.error("--stages must be between 1 and 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="penstock-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    options = Options(
        sizes=args.size_list,
        stages=args.stages,
        idle_seconds=args.idle_seconds,
        resync_seconds=args.resync_seconds,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        cache=args.cache,
        work=work,
        updates=args.updates,
    )
    rows: list[Row] = []
    failure: str | None = None
    log(f"work dir (manifests, operator logs): {work}")
    info = ""
    revision = operator_revision()
    try:
        pods, options.children_summary = pods_per_pipeline(
            options.stages, options.cache, work, options.timeout
        )
        # One namespace holds pods at a time (the direct one is deleted before the operator's).
        pods_needed = max(options.sizes) * pods
        nodes_needed = max(3, math.ceil(pods_needed * 1.1 / PODS_PER_KWOK_NODE))
        with control_plane(nodes_needed, "PENSTOCK_BENCH_KEEP_CLUSTER") as cluster:
            api = Api(cluster.kubeconfig)
            try:
                cluster.install_crd(options.timeout)
                check_capacity(api, pods_needed)
                for index, size in enumerate(options.sizes):
                    row = Row(size=size)
                    rows.append(row)
                    last = index == len(options.sizes) - 1
                    try:
                        run_size(cluster, api, options, row, not (last and cluster.started_here))
                    finally:
                        # Normally run_size has deleted them already; this is for a failure.
                        wait = None if cluster.started_here else options.timeout
                        with contextlib.suppress(HarnessError):
                            abandon_namespaces(cluster, api, row.namespaces, wait)
            finally:
                with contextlib.suppress(HarnessError):
                    info = machine_info(api, cluster, revision)
    except HarnessError as error:
        failure = str(error)
    except KeyboardInterrupt:
        failure = "interrupted"

    print("## Penstock operator benchmark\n")
    print(table(rows))
    print(details(rows, options))
    print("\nCommand:\n")
    print(f"    {command_line()}")
    if info:
        print("\nMachine:\n")
        print(info)
    print()
    for row in rows:
        print(row.machine_line())
    if failure:
        print(f"\nFAILED: {failure}")
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
