"""``penstock router``: the pipeline's entrypoint, running the stage DAG per request.

``POST /`` with the pipeline input (JSON). Every stage the output depends on is called as soon as
all of its inputs exist (asyncio tasks, maximum parallelism); stages the output does not depend
on are never called. A stage receives the envelope of the DESIGN stage contract. The output
stage's answer is the response; when it streams (``stream: true``) its body reaches the client
chunk by chunk with the stage's content type.

Errors are JSON ``{"error", "pipeline", "stage"}``: 400 for a bad request body, 502 when a stage
fails (non-2xx, connection error, invalid JSON; the other in-flight stages are cancelled), 504
when a stage's ``timeoutSeconds`` or the pipeline's ``latencyBudgetMs`` runs out (``stage`` names
the stage still running then).

With the request header ``X-Penstock-Profile: 1`` a JSON answer is wrapped as
``{"output": ..., "profile": {"stages": [...], "critical_path": [...], "total_ms": ...}}``.
Profiles are only given for non-streaming outputs: a streamed body has no place for them (the
header is ignored then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)

from penstock.api import graph as stage_graph
from penstock.contract import wire
from penstock.contract.profile import Profile, StageTiming
from penstock.contract.topology import StageRoute, Topology, TopologyError
from penstock.contract.wire import ADMIN_PORT, CACHE_HEADER, PROFILE_HEADER, ROUTER_ENV_PREFIX
from penstock.dataplane.errors import StageError, json_error
from penstock.dataplane.flags import ConfigError, FlagParser, HostPort, parse_host_port
from penstock.dataplane.flags import pick as pick_flag
from penstock.dataplane.jsonbody import MAX_DEPTH, JsonBodyError
from penstock.dataplane.jsonbody import parse as parse_json_body
from penstock.dataplane.limits import (
    LIMIT_FLAGS,
    BodyTimeout,
    Identity,
    ServerLimits,
    parse_limit,
)
from penstock.dataplane.router_stream import relay, visible
from penstock.dataplane.router_topology import (
    envelope_body,
    load_pipeline,
    load_topology,
    parse_stage_urls,
)
from penstock.dataplane.server import Server, build_tracer, serve_until_stopped
from penstock.dataplane.serving import run_command
from penstock.dataplane.telemetry import (
    ATTR_PIPELINE,
    ATTR_STAGE,
    DURATION_BUCKETS,
)
from penstock.dataplane.upstream import UpstreamResponse, pool_for, tls_context

log = logging.getLogger("penstock.router")

ENV_PREFIX = ROUTER_ENV_PREFIX
JSON_TYPE = "application/json"
MAX_BODY_BYTES = 16 << 20


# =========================================================================== configuration


@dataclass(frozen=True)
class RouterConfig:
    listen: HostPort
    topology: Topology
    admin_listen: HostPort
    otlp_endpoint: str | None = None
    sampling_ratio: float = 1.0
    stage_ca_file: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)


def env_name(flag: str) -> str:
    """``--stage-url`` -> ``PENSTOCK_ROUTER_STAGE_URL``."""
    return wire.env_name(ENV_PREFIX, flag)


_HELP = {
    "--listen": ("HOST:PORT", "where clients reach the pipeline (required)"),
    "--pipeline": ("FILE", "a Pipeline YAML; stage URLs come from --stage-url (local runs)"),
    "--topology": ("FILE", "the topology.json of the pipeline's ConfigMap (in the cluster)"),
    "--stage-url": (
        "NAME=URL",
        "where stage NAME is reached, repeatable; required with --pipeline for every stage the"
        " output needs, overrides the topology's URL otherwise (env: comma-separated)",
    ),
    "--admin-listen": ("HOST:PORT", "/metrics, /live, /ready (default: the --listen host, 9090)"),
    "--otlp-endpoint": ("URL", "OTLP/HTTP collector; enables spans per request and stage"),
    "--sampling-ratio": ("R", "trace sampling ratio in [0, 1] (default 1)"),
    "--stage-ca-file": (
        "FILE",
        "PEM CA bundle that https:// stage certificates are verified against, instead of the"
        " system CA bundle",
    ),
    **{flag: ("N", text) for flag, (_, text) in LIMIT_FLAGS.items()},
}


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="penstock router",
        description="The pipeline's entrypoint: runs the stage DAG per request with maximum"
        " parallelism, enforces the latency budget, streams the output stage, profiles on"
        f" request ({PROFILE_HEADER}: 1).",
        epilog=f"Every flag --foo-bar can also be set with {ENV_PREFIX}FOO_BAR."
        " Exit status 2 on bad flags or files.",
    )
    for flag, (metavar, text) in _HELP.items():
        parser.add_argument(
            flag,
            metavar=metavar,
            default=None,
            action="append" if flag == "--stage-url" else "store",
            help=f"{text} [env: {env_name(flag)}]",
        )
    return parser


def _url(source: str, text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: {text!r} is not an http(s)://host[:port] URL")
    return text.strip()


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> RouterConfig:
    """Flags, else environment variables, else defaults; raise :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv))

    def pick(flag: str) -> tuple[str | None, str]:
        return pick_flag(args, env, ENV_PREFIX, flag)

    listen_text, source = pick("--listen")
    if listen_text is None:
        raise ConfigError(f"--listen is required (or set {env_name('--listen')})")
    try:
        listen = parse_host_port(listen_text)
        admin_text, source = pick("--admin-listen")
        admin = parse_host_port(admin_text) if admin_text else HostPort(listen.host, ADMIN_PORT)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    if admin == listen and listen.port != 0:
        raise ConfigError("--admin-listen must differ from --listen")
    otlp, source = pick("--otlp-endpoint")
    if otlp is not None:
        otlp = _url(source, otlp)
    ratio_text, source = pick("--sampling-ratio")
    ratio = 1.0
    if ratio_text is not None:
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ConfigError(f"{source}: {ratio_text!r} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"{source}: {ratio_text!r} is not in [0, 1]")
    ca_file, source = pick("--stage-ca-file")
    if ca_file is not None:
        try:
            tls_context(ca_file)
        except OSError as error:  # ssl.SSLError too: not PEM, no certificate in it
            raise ConfigError(f"{source}: cannot load CA file {ca_file}: {error}") from None
    limits: dict[str, Any] = {}
    for flag, (name, _) in LIMIT_FLAGS.items():
        text, source = pick(flag)
        if text is not None:
            try:
                limits[name] = parse_limit(flag, text)
            except ValueError as error:
                raise ConfigError(f"{source}: {error}") from None
    items: list[str] = [item for item in (args.stage_url or []) if item.strip()]
    if not items:
        items = [i for i in env.get(env_name("--stage-url"), "").replace(",", " ").split() if i]
    pipeline, _ = pick("--pipeline")
    topology_file, _ = pick("--topology")
    if (pipeline is None) == (topology_file is None):
        raise ConfigError(
            "give exactly one of --pipeline FILE (a Pipeline YAML) or --topology FILE"
            " (the topology.json of the pipeline's ConfigMap)"
        )
    try:
        urls = parse_stage_urls(items)
        if pipeline is not None:
            topology = load_pipeline(pipeline, urls)
        else:
            topology = with_stage_urls(load_topology(topology_file or ""), urls)
    except TopologyError as error:
        raise ConfigError(str(error)) from None
    return RouterConfig(listen, topology, admin, otlp, ratio, ca_file, ServerLimits(**limits))


def with_stage_urls(topology: Topology, urls: Mapping[str, str]) -> Topology:
    """The topology with some stages' URLs replaced (``--stage-url`` over ``topology.json``)."""
    unknown = sorted(set(urls) - set(topology.stages))
    if unknown:
        raise TopologyError(
            f"--stage-url names no stage of pipeline {topology.pipeline!r}: {', '.join(unknown)}"
        )
    stages = {
        name: replace(stage, url=urls.get(name, stage.url))
        for name, stage in topology.stages.items()
    }
    return replace(topology, stages=stages)


# =========================================================================== telemetry


class RouterMetrics:
    """The router's metrics in a registry of its own (several routers may share a process)."""

    def __init__(self, topology: Topology) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"namespace": topology.namespace, "pipeline": topology.pipeline}
        self._requests = Counter(
            "penstock_pipeline_requests_total",
            "Pipeline requests through the router, by outcome (ok, bad_request, stage_error,"
            " timeout, stream_aborted, client_closed, cancelled, internal_error)",
            ["namespace", "pipeline", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "penstock_pipeline_request_duration_seconds",
            "Time from request to complete pipeline response at the router",
            ["namespace", "pipeline"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        ).labels(**self._labels)
        self._children: dict[str, Counter] = {}

    def request(self, outcome: str) -> None:
        child = self._children.get(outcome)
        if child is None:
            child = self._children[outcome] = self._requests.labels(**self._labels, outcome=outcome)
        child.inc()


# =========================================================================== execution


@dataclass
class _Answer:
    body: bytes = b""
    response: UpstreamResponse | None = None  # an open streaming response


@dataclass
class _Run:
    """One request's bookkeeping: when each stage started and ended (for the profile)."""

    t0: float
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    cache: dict[str, str | None] = field(default_factory=dict)

    def ms(self, at: float) -> float:
        return round((at - self.t0) * 1000, 3)


def _endpoint(url: str) -> str:
    """A stage's base URL serves the contract at ``/``; a URL with a path is used as is."""
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/"


def _json_error(status: int, message: str, pipeline: str, stage: str | None = None) -> web.Response:
    identity = {"pipeline": pipeline} if stage is None else {"pipeline": pipeline, "stage": stage}
    return json_error(status, message, identity)


class Router(Server):
    """One router instance: its listeners, keep-alive client pool, metrics and tracer."""

    def __init__(self, config: RouterConfig, *, span_exporter: SpanExporter | None = None):
        self.config = config
        self.topology = topology = config.topology
        self.metrics = RouterMetrics(topology)
        identity = Identity(
            f"the router of pipeline {topology.pipeline!r}", {"pipeline": topology.pipeline}
        )
        tracer = build_tracer(
            "penstock.router",
            {
                "service.name": f"{topology.pipeline}.router",
                "service.namespace": topology.namespace,
                ATTR_PIPELINE: topology.pipeline,
            },
            config.otlp_endpoint,
            config.sampling_ratio,
            span_exporter,
        )
        super().__init__(identity, self.metrics.registry, tracer)
        self._graph = self.topology.graph
        needed = self.topology.needed()
        # Stages in file order: a stable launch order, and the profile lists them so.
        self._needed = [name for name in self.topology.stages if name in needed]
        self._endpoints = {
            name: _endpoint(stage.url) for name, stage in self.topology.stages.items()
        }
        # One keep-alive pool per stage Service (a small llhttp client: see dataplane/upstream);
        # https:// stages over TLS, verified against --stage-ca-file or the system CA bundle.
        tls = None
        if any(urlsplit(url).scheme == "https" for url in self._endpoints.values()):
            tls = tls_context(config.stage_ca_file)
        self._pools = {name: pool_for(url, tls) for name, url in self._endpoints.items()}

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = self.public_app("POST / (the pipeline input as JSON)", MAX_BODY_BYTES)
        app.router.add_post("/", self._handle)
        await self.open(app, self.config.listen, self.config.admin_listen, self.config.limits)
        self.ready = True

    async def stop(self) -> None:
        await self.close()
        for pool, _ in self._pools.values():
            pool.close()
        self.close_tracer()

    def readiness(self) -> dict[str, Any]:
        return {"pipeline": self.topology.pipeline}

    # ----------------------------------------------------------------- requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        outcome = "internal_error"
        try:
            response, outcome = await self._serve(request, started)
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            if request.writer.output_size > 0:  # mid-answer: the error middleware cuts it
                raise
            pipeline = self.topology.pipeline
            log.exception("pipeline %s: internal error", pipeline)
            return _json_error(500, "internal error in the router (logged)", pipeline)
        finally:
            self.metrics.request(outcome)
            self.metrics.duration.observe(time.perf_counter() - started)

    async def _serve(self, request: web.Request, started: float) -> tuple[web.StreamResponse, str]:
        pipeline = self.topology.pipeline
        raw = await self._read_body(request)
        if isinstance(raw, tuple):
            return raw
        try:  # strict JSON, as the gateways take it; the envelope adds one level of nesting
            parse_json_body(raw, max_depth=MAX_DEPTH - 1)
        except JsonBodyError as error:
            return _json_error(400, f"request body {error}", pipeline), "bad_request"
        profile = request.headers.get(PROFILE_HEADER, "").strip().lower() in ("1", "true")
        parent = self._propagator.extract(request.headers)
        with self._tracer.start_as_current_span(
            f"pipeline {pipeline}", context=parent, kind=SpanKind.SERVER
        ) as span:
            if span.is_recording():
                span.set_attribute(ATTR_PIPELINE, pipeline)
            # Without tracing, the caller's traceparent is passed on unchanged.
            context = None if self._tracing else parent
            run = _Run(started)
            deadline = None
            if self.topology.latency_budget_ms is not None:
                deadline = started + self.topology.latency_budget_ms / 1000
            try:
                answer = await self._execute(raw, run, deadline, context)
                if answer.response is not None:
                    response, outcome = await self._stream(request, answer.response, deadline)
                    if outcome == "stream_aborted" and span.is_recording():
                        span.set_status(Status(StatusCode.ERROR, "stream aborted"))
                    return response, outcome
            except StageError as error:
                if span.is_recording():
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute(ATTR_STAGE, error.stage)
                log.warning("pipeline %s: %s", pipeline, error.message)
                outcome = "timeout" if error.status == 504 else "stage_error"
                return _json_error(error.status, error.message, pipeline, error.stage), outcome
            if not profile:
                return web.Response(body=answer.body, content_type=JSON_TYPE), "ok"
            wrapped = {"output": json.loads(answer.body), "profile": self._profile(run)}
            return web.json_response(wrapped), "ok"

    async def _read_body(self, request: web.Request) -> bytes | tuple[web.Response, str]:
        """The request body, or the answer when it cannot be had (too large, broken, gone)."""
        pipeline = self.topology.pipeline
        too_large = f"request body is larger than {MAX_BODY_BYTES} bytes"
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _json_error(413, too_large, pipeline), "bad_request"
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, too_large, pipeline), "bad_request"
        except BodyTimeout as error:
            return _json_error(408, str(error), pipeline), "bad_request"
        except (aiohttp.ClientPayloadError, ConnectionResetError) as error:
            if isinstance(error, ConnectionResetError) and request.transport is None:
                return _json_error(400, "client left", pipeline), "client_closed"
            message = f"request body could not be read: {error}"
            return _json_error(400, message, pipeline), "bad_request"

    def _profile(self, run: _Run) -> dict[str, Any]:
        stages = {
            name: StageTiming(
                name, run.ms(run.started[name]), run.ms(run.ended[name]), run.cache.get(name)
            )
            for name in self._needed
            if name in run.ended
        }
        path = stage_graph.waited_chain(self._graph, self.topology.output, run.ended)
        total = run.ms(time.perf_counter())
        return Profile(stages, tuple(path), total).to_document()

    async def _execute(
        self, raw_input: bytes, run: _Run, deadline: float | None, context: Context | None
    ) -> _Answer:
        """Run the needed stages, each as soon as its inputs exist; the output's answer."""
        output = self.topology.output
        outputs: dict[str, bytes] = {}
        answers: dict[str, _Answer] = {}
        running: dict[asyncio.Task[_Answer], str] = {}
        try:
            while True:
                for name in stage_graph.ready(self._graph, self._needed, outputs, running.values()):
                    stage = self.topology.stages[name]
                    body = envelope_body(stage.depends_on, raw_input, outputs)
                    stream = name == output and stage.stream
                    task = asyncio.create_task(self._call(stage, body, run, context, stream))
                    running[task] = name
                if not running:
                    return answers[output]
                timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
                done, _ = await asyncio.wait(
                    running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    late = sorted(running.values(), key=lambda name: run.started.get(name, 0.0))
                    others = f" (also running: {', '.join(late[1:])})" if len(late) > 1 else ""
                    raise StageError(
                        late[0],
                        f"latency budget of {self.topology.latency_budget_ms} ms ran out while"
                        f" stage {late[0]!r} was running{others}",
                        504,
                    )
                for task in done:
                    name = running.pop(task)
                    try:
                        answer = task.result()
                    except StageError:
                        raise
                    except Exception as error:  # a bug, not a stage's fault; still no hang
                        raise StageError(name, f"stage {name!r}: {error!r}") from error
                    answers[name] = answer
                    outputs[name] = answer.body
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _call(
        self, stage: StageRoute, body: bytes, run: _Run, context: Context | None, stream: bool
    ) -> _Answer:
        name = stage.name
        with self._tracer.start_as_current_span(f"stage {name}", kind=SpanKind.CLIENT) as span:
            headers = {"Content-Type": JSON_TYPE, "Accept": "*/*" if stream else JSON_TYPE}
            self._propagator.inject(headers, context=context)
            if span.is_recording():
                span.set_attributes({ATTR_PIPELINE: self.topology.pipeline, ATTR_STAGE: name})
            run.started[name] = time.perf_counter()
            try:
                answer = await self._post(stage, body, headers, run, stream)
            except StageError as error:
                if span.is_recording():
                    span.set_status(Status(StatusCode.ERROR, error.message))
                raise
            finally:
                run.ended[name] = time.perf_counter()
            return answer

    async def _post(
        self,
        stage: StageRoute,
        body: bytes,
        headers: dict[str, str],
        run: _Run,
        stream: bool,
    ) -> _Answer:
        name, url = stage.name, self._endpoints[stage.name]
        pool, target = self._pools[name]
        try:
            async with asyncio.timeout(stage.timeout_seconds):
                response = await pool.request("POST", target, list(headers.items()), body)
                try:
                    run.cache[name] = visible(response.header(CACHE_HEADER))
                    if not 200 <= response.status <= 299:
                        detail = (await response.read())[:300].decode("utf-8", "replace")
                        raise StageError(
                            name,
                            f"stage {name!r} answered HTTP {response.status}: {detail.strip()}",
                        )
                    if stream:
                        return _Answer(response=response)
                    data = await response.read()
                except BaseException:
                    response.release()
                    raise
                response.release()
        except TimeoutError:
            raise StageError(
                name,
                f"stage {name!r} did not answer within its timeoutSeconds"
                f" ({stage.timeout_seconds:g} s)",
                504,
            ) from None
        except OSError as error:
            raise StageError(
                name, f"stage {name!r} at {url} failed: {type(error).__name__}: {error}"
            ) from None
        try:
            json.loads(data)
        except ValueError as error:
            raise StageError(name, f"stage {name!r} answered invalid JSON: {error}") from None
        return _Answer(body=data)

    async def _stream(
        self, request: web.Request, upstream: UpstreamResponse, deadline: float | None
    ) -> tuple[web.StreamResponse, str]:
        """Pass the output stage's body through as it arrives (see dataplane/router_stream)."""
        output = self.topology.output
        end = time.perf_counter() + self.topology.stages[output].timeout_seconds
        if deadline is not None:
            end = min(end, deadline)
        return await relay(request, upstream, output, end, self.topology.pipeline)


# =========================================================================== entry point


async def serve(config: RouterConfig, stop: asyncio.Event | None = None) -> None:
    """Start a router, run until ``stop`` is set (or SIGTERM/SIGINT), then stop."""
    router, topology = Router(config), config.topology

    def started() -> str:
        return (
            f"router for pipeline {topology.namespace}/{topology.pipeline} listening on"
            f" {config.listen.host}:{router.port} (admin {config.admin_listen.host}:"
            f"{router.admin_port}), output {topology.output},"
            f" stages {', '.join(sorted(topology.needed()))}"
        )

    await serve_until_stopped(router, stop, started, log)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``penstock router`` with ``argv`` (the arguments after ``router``)."""
    return run_command(
        "router", argv, build_parser().print_help, parse_config, (ConfigError,), serve
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
