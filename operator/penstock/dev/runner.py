"""``penstock dev FILE``: run a whole Pipeline on this machine, without Kubernetes.

Everything listens on loopback (127.0.0.1), on free ports except the router's ``--port``:

- one ``redis-server`` when any stage caches (and ``--no-cache`` is not given);
- every stage the output needs, started from the Pipeline annotation
  ``penstock.dev/dev-command.<stage>``, e.g. ``"python examples/rag/embed/app.py --port {port}"``
  (``{port}`` and ``{host}`` are filled in; a leading ``python`` is this interpreter; the command
  runs in the current directory, or in the nearest directory above the Pipeline file that holds
  its relative ``.py`` script, with ``HOST`` and ``PORT`` also set, plus the stage's plain
  ``env`` values);
- one ``penstock gateway`` in front of each stage that would get one in the cluster (cache,
  batching, warmup or tracing), with the same cache, batching and warmup settings;
- ``penstock router`` on ``--port``, reaching each stage through its gateway (or directly).

It waits until the stages answer ``/healthz``, the gateways and the router ``/ready`` (an error
shows the failing process's log tail), prints the URL and example requests, and stops all of them
(each in its own process group) on Ctrl-C or SIGTERM, or when any of them exits.

With ``--no-stream`` the router gets a copy of the Pipeline whose stages do not stream, so the
output arrives as one JSON answer and ``X-Penstock-Profile: 1`` profiles are available (the router
gives no profile for a streamed output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from penstock.api import PipelineSpec, Stage
from penstock.api.cost import PriceTable
from penstock.api.pipeline import Workload
from penstock.api.validation import validate_document
from penstock.contract.gateway import Placement, gateway_args
from penstock.contract.topology import target
from penstock.dev.processes import DevError, Proc, exited, failure, start, stop_all, wait_ready
from penstock.render.gateway import needs_gateway, warmup_key
from penstock.render.settings import RenderSettings
from penstock.safeyaml import DocumentError, load_yaml_file

DEV_COMMAND = "penstock.dev/dev-command."
EXAMPLE_INPUT = "penstock.dev/dev-example-input"
HOST = "127.0.0.1"


class _Stop(Exception):
    """SIGTERM arrived."""


def stage_cwd(argv: Sequence[str], pipeline_file: str) -> Path:
    """Where a stage command runs: the current directory, unless its script (the first ``.py``
    argument, when relative) is not there but is under a directory holding the Pipeline file."""
    here = Path.cwd()
    script = next((arg for arg in argv[1:] if arg.endswith(".py")), None)
    if script is None or Path(script).is_absolute() or (here / script).exists():
        return here
    folder = Path(pipeline_file).resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / script).exists():
            return candidate
    return here


@dataclass
class Plan:
    pipeline: str
    port: int
    procs: list[Proc] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    streams: bool = False
    example: str = '{"text": "hello"}'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penstock dev",
        description="Run a Pipeline locally: Redis, the stage processes (from their "
        "penstock.dev/dev-command.<stage> annotations), a gateway per stage that needs one, and "
        "the router, all on 127.0.0.1. Ctrl-C stops everything.",
    )
    parser.add_argument("file", metavar="FILE", help="a Pipeline YAML (one document)")
    parser.add_argument("--port", type=int, default=8000, help="router port (default 8000)")
    parser.add_argument(
        "--no-cache", action="store_true", help="no Redis and no caching in the gateways"
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="the output answers as one JSON body, so X-Penstock-Profile: 1 profiles work",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for every process to be ready (default 180)",
    )
    parser.add_argument("--log-dir", help="where process logs go (default: a temporary directory)")
    parser.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="OTLP/HTTP endpoint (e.g. a local Jaeger, http://127.0.0.1:4318) for the traces of a"
        " Pipeline with tracing enabled; the router and gateways export there as in a cluster",
    )
    return parser


def load_pipeline(path: str) -> tuple[dict[str, Any], PipelineSpec]:
    try:
        documents = [body for _, body in load_yaml_file(path)]
    except DocumentError as error:
        raise DevError(str(error)) from None
    if len(documents) != 1:
        raise DevError(f"{path}: expected one Pipeline document (got {len(documents)})")
    document = documents[0]
    result = validate_document(document)
    if not result.valid or result.spec is None:
        problems = "\n".join(f"  {problem}" for problem in result.errors)
        raise DevError(f"{path}: invalid Pipeline:\n{problems}")
    return document, result.spec


def stage_command(annotations: dict[str, Any], stage: str, port: int) -> list[str]:
    key = DEV_COMMAND + stage
    command = annotations.get(key)
    if not isinstance(command, str) or not command.strip():
        raise DevError(
            f"stage {stage!r} has no dev command: add the Pipeline annotation"
            f' {key}: "python path/to/app.py --port {{port}}" (how to start it locally)'
        )
    try:
        argv = shlex.split(command.replace("{port}", str(port)).replace("{host}", HOST))
    except ValueError as error:
        raise DevError(f"annotation {key}: cannot parse the command: {error}") from None
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def gateway_argv(
    name: str,
    spec: PipelineSpec,
    stage: Stage,
    listen: int,
    admin: int,
    upstream: str,
    redis_url: str | None,
    warmup_dir: Path,
    otlp_endpoint: str | None = None,
    embedder_url: str | None = None,
    variant: str | None = None,
) -> list[str]:
    """The gateway's command line: the flags the operator passes as environment variables
    (penstock.contract.gateway), with local addresses and files, priced by the default table."""
    warmup_file = None
    warmup = stage.model.warmup if stage.model else None
    if warmup is not None and warmup.requests > 0:
        body = warmup_dir / warmup_key(Workload(stage, variant).component)
        body.write_text(warmup.body_document())
        warmup_file = str(body)
    where = Placement(
        listen=f"{HOST}:{listen}",
        admin_listen=f"{HOST}:{admin}",
        upstream=upstream,
        namespace="dev",
        redis_url=redis_url,
        warmup_body_file=warmup_file,
        otlp_endpoint=otlp_endpoint,
        embedder_url=embedder_url,
        # Beside the logs: kept across runs with --log-dir, else removed with them.
        disk_cache_dir=str(warmup_dir / f"disk-cache-{Workload(stage, variant).component}"),
    )
    args = gateway_args(name, spec, stage, PriceTable(), where, variant)
    return [sys.executable, "-m", "penstock.cli", "gateway", *args.to_argv()]


def plan(
    document: dict[str, Any], spec: PipelineSpec, args: argparse.Namespace, workdir: Path
) -> Plan:
    """Every process to start, with its ports, before anything starts."""
    metadata = document.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    name = str(metadata["name"])
    result = Plan(pipeline=name, port=args.port)
    otlp = args.otlp_endpoint if spec.tracing_enabled else None
    needed = spec.needed_stages()
    for stage in spec.stages:
        if stage.name not in needed:
            result.notes.append(f"stage {stage.name} is not started: the output does not need it")
    # Check every annotation first: one clear error before anything runs. A stage with
    # variants runs each (annotation penstock.dev/dev-command.<stage>-<variant>).
    workloads = {
        target(workload.stage.name, workload.variant): workload
        for workload in spec.workloads()
        if workload.stage.name in needed
    }
    commands = {}
    ports = {}
    for key, workload in workloads.items():
        ports[key] = free_port()
        commands[key] = stage_command(annotations, workload.component, ports[key])
    uses_cache = not args.no_cache and any(w.stage.cache_enabled for w in workloads.values())
    redis_url = None
    if uses_cache:
        redis_port = free_port()
        redis_url = f"redis://{HOST}:{redis_port}/0"
        argv = ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "no", "--protected-mode", "yes"]
        result.procs.append(Proc("redis", argv, workdir / "redis.log", None))
    effective = {
        key: w.stage.model_copy(update={"cache": None}) if args.no_cache else w.stage
        for key, w in workloads.items()
    }
    gateway_ports = {  # before any gateway's flags: one stage's gateway may call another's
        key: (free_port(), free_port())
        for key, stage in effective.items()
        if needs_gateway(spec, stage, RenderSettings())
    }
    front = {  # what clients of each stage call: its gateway, else the stage itself
        key: f"http://{HOST}:{gateway_ports[key][0]}"
        if key in gateway_ports
        else f"http://{HOST}:{ports[key]}"
        for key in ports
    }
    for key, workload in workloads.items():
        port = ports[key]
        component = workload.component
        stage_url = f"http://{HOST}:{port}"
        result.procs.append(
            Proc(
                f"stage {key}",
                commands[key],
                workdir / f"stage-{component}.log",
                f"{stage_url}/healthz",
                stage_cwd(commands[key], args.file),
            )
        )
        if key in gateway_ports:
            listen, admin = gateway_ports[key]
            chosen = effective[key]
            semantic = chosen.cache.semantic if chosen.cache else None
            # Through the embedder's gateway, as in a cluster: its cache serves repeated texts.
            embedder = front[semantic.embedder] if semantic else None
            argv = gateway_argv(
                name,
                spec,
                chosen,
                listen,
                admin,
                stage_url,
                redis_url,
                workdir,
                otlp,
                embedder,
                workload.variant,
            )
            result.procs.append(
                Proc(
                    f"gateway {key}",
                    argv,
                    workdir / f"gateway-{component}.log",
                    f"http://{HOST}:{admin}/ready",
                )
            )
        result.urls[key] = front[key]
    pipeline_file = Path(args.file)
    result.streams = spec.stage(spec.output_stage).stream
    if args.no_stream and any(stage.stream for stage in spec.stages):
        copy = json.loads(json.dumps(document))
        for stage in copy["spec"]["stages"]:
            stage["stream"] = False
        pipeline_file = workdir / "pipeline.yaml"
        pipeline_file.write_text(yaml.safe_dump(copy, sort_keys=False))
        result.streams = False
    router_admin = free_port()
    argv = [sys.executable, "-m", "penstock.cli", "router", "--pipeline", str(pipeline_file)]
    argv += ["--listen", f"{HOST}:{args.port}", "--admin-listen", f"{HOST}:{router_admin}"]
    for stage_name, url in result.urls.items():
        argv += ["--stage-url", f"{stage_name}={url}"]
    if otlp and spec.tracing:
        argv += ["--otlp-endpoint", otlp, "--sampling-ratio", str(spec.tracing.sampling_ratio)]
    result.procs.append(
        Proc("router", argv, workdir / "router.log", f"http://{HOST}:{router_admin}/ready")
    )
    example = annotations.get(EXAMPLE_INPUT)
    if isinstance(example, str) and example.strip():
        result.example = example.strip()
    return result


def banner(result: Plan) -> str:
    url = f"http://{HOST}:{result.port}/"
    body = shlex.quote(result.example)
    lines = [f"penstock dev: pipeline {result.pipeline} is ready at {url}"]
    for proc in result.procs:
        assert proc.popen is not None
        lines.append(f"  {proc.name:<22} pid {proc.popen.pid:<8} log {proc.log}")
    for stage, stage_url in result.urls.items():
        lines.append(f"  router -> {stage:<12} {stage_url}")
    lines += [f"  note: {note}" for note in result.notes]
    json_header = "-H 'Content-Type: application/json'"
    lines += [
        "",
        "Try:",
        f"  curl -sN {url} {json_header} -d {body}",
        f"  curl -s {url} {json_header} -H 'X-Penstock-Profile: 1' -d {body}",
    ]
    if result.streams:
        lines.append(
            "  (the output stage streams, so the router gives no profile: "
            "restart with --no-stream to profile)"
        )
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


@contextlib.contextmanager
def _workdir(log_dir: str | None) -> Iterator[Path]:
    """Where logs and generated files go: ``--log-dir`` (kept), else a temporary directory that
    is removed on every way out (success, Ctrl-C, SIGTERM, any error, early or late)."""
    if log_dir:
        workdir = Path(log_dir)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DevError(f"--log-dir {log_dir}: {error.strerror or error}") from None
        yield workdir
        return
    workdir = Path(tempfile.mkdtemp(prefix="penstock-dev-"))
    try:
        yield workdir
    except DevError as error:
        raise DevError(
            f"{error}\n(the logs were in {workdir}, now removed: --log-dir DIR keeps them)"
        ) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def serving(args: argparse.Namespace) -> Iterator[Plan]:
    """The Pipeline of `args` (build_parser's namespace) running on this machine: every
    process started and ready inside the block, every one stopped on the way out."""
    document, spec = load_pipeline(args.file)
    with _workdir(args.log_dir) as workdir:
        result = plan(document, spec, args, workdir)
        env = dict(os.environ, HOST=HOST)
        # A stage, or one of its variants (<stage>/<variant>, with the variant's env).
        stages = {target(w.stage.name, w.variant): w.stage for w in spec.workloads()}
        try:
            for proc in result.procs:
                stage_env = dict(env)
                if proc.name.startswith("stage "):
                    stage = stages[proc.name.removeprefix("stage ")]
                    for var in stage.env or []:
                        if var.value is not None:
                            stage_env[var.name] = var.value
                    assert proc.ready_url is not None
                    stage_env["PORT"] = proc.ready_url.rsplit(":", 1)[1].split("/", 1)[0]
                start(proc, stage_env)
            wait_ready(result.procs, args.ready_timeout)
            yield result
        finally:
            # No more signals while stopping: a second Ctrl-C must not leave orphans.
            original_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            original_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                stop_all(result.procs)
            finally:
                signal.signal(signal.SIGTERM, original_term)
                signal.signal(signal.SIGINT, original_int)


def run(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with serving(args) as result:
            print(banner(result), flush=True)
            while True:
                dead = exited(result.procs)
                if dead is not None:
                    assert dead.popen is not None
                    raise failure(dead, f"exited with status {dead.popen.returncode}")
                time.sleep(0.5)
    except (_Stop, KeyboardInterrupt):
        print("penstock dev: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DevError as error:
        print(f"penstock dev: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
