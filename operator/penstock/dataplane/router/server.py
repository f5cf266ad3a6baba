"""``penstock router``: the pipeline's entrypoint, running the stage DAG per request.

``POST /`` with the pipeline input (JSON). Every stage the output depends on is called as soon as
all of its inputs exist (asyncio tasks, maximum parallelism); stages the output does not depend
on are never called. A stage receives the envelope of the DESIGN stage contract. The output
stage's answer is the response; when it streams (``stream: true``) its body reaches the client
chunk by chunk with the stage's content type.

Errors are JSON ``{"error", "pipeline", "stage"}``: 400 for a bad request body, 502 when a stage
fails (non-2xx, connection error, invalid JSON; the other in-flight stages are cancelled; a
refused connection is first tried again for up to ``CONNECT_RETRY_SECONDS``), 503
with the stage's ``Retry-After`` (1 when it gave none) when a stage is overloaded (it answered
429 or 503), 504 when a stage's ``timeoutSeconds`` or the pipeline's ``latencyBudgetMs`` runs
out (``stage`` names the stage still running then).

With the request header ``X-Penstock-Profile: 1`` a JSON answer is wrapped as
``{"output": ..., "profile": {"stages": [...], "critical_path": [...], "total_ms": ...}}``.
Profiles are only given for non-streaming outputs: a streamed body has no place for them (the
header is ignored then).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from penstock.api import graph as stage_graph
from penstock.contract.profile import Profile, StageTiming, VariantAttempt
from penstock.contract.topology import StageRoute, VariantRoute, target
from penstock.contract.wire import (
    ATTR_PIPELINE,
    ATTR_STAGE,
    ATTR_VARIANT,
    ATTR_VARIANT_ATTEMPTS,
    CACHE_HEADER,
    CONFIDENCE_HEADER,
    PROFILE_HEADER,
    VARIANT_HEADER,
)
from penstock.dataplane.errors import StageError
from penstock.dataplane.http1 import Answer as Reply
from penstock.dataplane.http1 import BodyTooLarge, Request, Response, json_response
from penstock.dataplane.jsonbody import MAX_DEPTH, JsonBodyError
from penstock.dataplane.jsonbody import parse as parse_json_body
from penstock.dataplane.limits import (
    BodyTimeout,
    Identity,
)
from penstock.dataplane.router.config import RouterConfig
from penstock.dataplane.router.stream import relay, visible
from penstock.dataplane.router.telemetry import RouterMetrics
from penstock.dataplane.router.topology import (
    envelope_body,
)
from penstock.dataplane.server import Server, build_tracer
from penstock.dataplane.upstream import (
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamResponse,
    pool_for,
    tls_context,
)

log = logging.getLogger("penstock.router")

JSON_TYPE = "application/json"
# A stage answering these is overloaded, not broken: the router answers 503 + Retry-After.
OVERLOADED = frozenset({429, 503})
MAX_BODY_BYTES = 16 << 20
# A stage Service refuses connections while its only pod is NotReady for a moment (a sidecar
# restarting, a rollout's last pod): the router keeps trying that long (at most 80% of the
# stage's timeoutSeconds, the rest is the stage's to answer in) before it answers 502.
CONNECT_RETRY_SECONDS = 5.0


def connect_retry_seconds(timeout_seconds: float) -> float:
    return min(CONNECT_RETRY_SECONDS, timeout_seconds * 0.8)


# policy budget: a variant's expected latency is the 90th percentile of its last calls.
LATENCY_WINDOW = 64
LATENCY_MIN_SAMPLES = 8


@dataclass
class _Answer:
    body: bytes = b""
    response: UpstreamResponse | None = None  # an open streaming response
    confidence: float | None = None  # X-Penstock-Confidence, when the stage sent a valid one


def confidence_of(value: str | None) -> float | None:
    """The X-Penstock-Confidence value: a number in [0, 1], else None (not reported)."""
    try:
        number = float((value or "").strip())
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


@dataclass
class _Run:
    """One request's bookkeeping: when each stage started and ended (for the profile)."""

    t0: float
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    cache: dict[str, str | None] = field(default_factory=dict)
    broken: dict[str, StageError] = field(default_factory=dict)
    """Streams into a dependant that broke (the dependant then fails for its source's fault)."""
    attempts: dict[str, list[VariantAttempt]] = field(default_factory=dict)
    """Per stage with variants: the variants called, in order; the last one's answer served."""

    def ms(self, at: float) -> float:
        return round((at - self.t0) * 1000, 3)


def _served_variants(run: _Run) -> str:
    """The X-Penstock-Variant value: <stage>=<variant> of each stage with variants."""
    return ",".join(
        f"{stage}={tried[-1].variant}" for stage, tried in run.attempts.items() if tried
    )


def _endpoint(url: str) -> str:
    """A stage's base URL serves the contract at ``/``; a URL with a path is used as is."""
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/"


def _json_error(
    status: int,
    message: str,
    pipeline: str,
    stage: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    identity = {"pipeline": pipeline} if stage is None else {"pipeline": pipeline, "stage": stage}
    return json_response({"error": message, **identity}, status=status, headers=headers)


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
        # input: stream: the dependant starts once its source's answer begins, not when it ends.
        self._streams_into = {
            stage.depends_on[0]: name
            for name, stage in self.topology.stages.items()
            if stage.stream_input and name in needed
        }
        self._launched_by_graph = [
            name for name in self._needed if not self.topology.stages[name].stream_input
        ]
        # What is called: each stage, or each variant of it (<stage>/<variant>).
        targets = {
            name: route
            for stage in self.topology.stages.values()
            for name, route in stage.targets().items()
        }
        self._endpoints = {name: _endpoint(url) for name, (url, _) in targets.items()}
        # One keep-alive pool per stage Service (a small llhttp client: see dataplane/upstream);
        # https:// stages over TLS, verified against --stage-ca-file or the system CA bundle.
        tls = None
        if any(urlsplit(url).scheme == "https" for url in self._endpoints.values()):
            tls = tls_context(config.stage_ca_file)
        self._pools = {
            name: pool_for(self._endpoints[name], tls, connect_retry_seconds(timeout))
            for name, (_, timeout) in targets.items()
        }
        self._latencies: dict[str, deque[float]] = {
            name: deque(maxlen=LATENCY_WINDOW) for name in targets
        }

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.open(
            self._handle,
            self.config.listen,
            self.config.admin_listen,
            self.config.limits,
            max_body_bytes=MAX_BODY_BYTES,
        )
        self.ready = True

    async def stop(self) -> None:
        await self.close()
        for pool, _ in self._pools.values():
            pool.close()
        self.close_tracer()

    def readiness(self) -> dict[str, Any]:
        return {"pipeline": self.topology.pipeline}

    # ----------------------------------------------------------------- requests

    async def _handle(self, request: Request) -> Reply:
        if request.path != "/" or request.method != "POST":
            return self._no_route(request)
        started = time.perf_counter()
        outcome = "internal_error"
        try:
            response, outcome = await self._serve(request, started)
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            if request.answer_started:  # mid-answer: the server cuts it
                raise
            pipeline = self.topology.pipeline
            log.exception("pipeline %s: internal error", pipeline)
            return _json_error(500, "internal error in the router (logged)", pipeline)
        finally:
            self.metrics.request(outcome)
            self.metrics.duration.observe(time.perf_counter() - started)

    def _no_route(self, request: Request) -> Response:
        who, pipeline = self.identity.describe, self.topology.pipeline
        serves = "POST / (the pipeline input as JSON)"
        message = f"{who} has no {request.method} {request.path}; it serves {serves}"
        if request.path != "/":
            return _json_error(404, message, pipeline)
        return _json_error(405, message, pipeline, headers={"Allow": "POST"})

    async def _serve(self, request: Request, started: float) -> tuple[Reply, str]:
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
                source = (
                    self.topology.stages[error.stage].depends_on
                    if error.stage in self.topology.stages
                    else ()
                )
                if error.stage == self.topology.output and source and source[0] in run.broken:
                    error = run.broken[source[0]]  # the streamed output broke for its input's fault
                if span.is_recording():
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute(ATTR_STAGE, error.stage)
                log.warning("pipeline %s: %s", pipeline, error.message)
                outcome = "timeout" if error.status == 504 else "stage_error"
                headers = {"Retry-After": error.retry_after} if error.retry_after else None
                answer_error = _json_error(
                    error.status, error.message, pipeline, error.stage, headers
                )
                return answer_error, outcome
            served = _served_variants(run)
            headers = {VARIANT_HEADER: served} if served else None
            if not profile:
                return Response(body=answer.body, content_type=JSON_TYPE, headers=headers), "ok"
            wrapped = {"output": json.loads(answer.body), "profile": self._profile(run)}
            return json_response(wrapped, headers=headers), "ok"

    async def _read_body(self, request: Request) -> bytes | tuple[Response, str]:
        """The request body, or the answer when it cannot be had (too large, broken, gone)."""
        pipeline = self.topology.pipeline
        too_large = f"request body is larger than {MAX_BODY_BYTES} bytes"
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _json_error(413, too_large, pipeline), "bad_request"
        try:
            return await request.body.read(MAX_BODY_BYTES)
        except BodyTooLarge:
            return _json_error(413, too_large, pipeline), "bad_request"
        except BodyTimeout as error:
            return _json_error(408, str(error), pipeline), "bad_request"
        except ConnectionError as error:
            if not request.connected:
                return _json_error(400, "client left", pipeline), "client_closed"
            message = f"request body could not be read: {error}"
            return _json_error(400, message, pipeline), "bad_request"

    def _profile(self, run: _Run) -> dict[str, Any]:
        stages = {
            name: StageTiming(
                name,
                run.ms(run.started[name]),
                run.ms(run.ended[name]),
                run.cache.get(name),
                tuple(run.attempts.get(name, ())),
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
        succeeded = False

        def launch(stage: StageRoute, body: bytes | AsyncIterator[bytes], kind: str) -> None:
            stream = stage.name in self._streams_into or (stage.name == output and stage.stream)
            call = self._call(stage, body, run, context, stream, kind)
            running[asyncio.create_task(call)] = stage.name

        try:
            while True:
                begun = [*running.values(), *answers]  # a streaming source has no output
                graph_ready = stage_graph.ready(
                    self._graph, self._launched_by_graph, outputs, begun
                )
                for name in graph_ready:
                    stage = self.topology.stages[name]
                    launch(stage, envelope_body(stage.depends_on, raw_input, outputs), JSON_TYPE)
                if not running:
                    succeeded = True
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
                        if task.cancelled():  # not by us (we are running): a bug, still no hang
                            raise StageError(name, f"the call of stage {name!r} was cancelled")
                        answer = task.result()
                    except StageError:
                        source = self.topology.stages[name].depends_on
                        if source and source[0] in run.broken:  # the input broke, not the reader
                            raise run.broken[source[0]] from None
                        raise
                    except Exception as error:  # a bug, not a stage's fault; still no hang
                        raise StageError(name, f"stage {name!r}: {error!r}") from error
                    answers[name] = answer
                    into = self._streams_into.get(name)
                    if into is not None and answer.response is not None:
                        opened = answer.response
                        kind = visible(opened.header("Content-Type")) or "application/octet-stream"
                        launch(
                            self.topology.stages[into], self._relay_input(name, opened, run), kind
                        )
                    else:
                        outputs[name] = answer.body
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            for name in self._streams_into:
                # A source whose reader failed, or never started to read: closed, so it stops
                # (release is idempotent; a stream read whole went back to the pool already).
                stream = answers[name].response if name in answers else None
                if stream is not None and not succeeded:
                    stream.close()

    async def _relay_input(
        self, name: str, upstream: UpstreamResponse, run: _Run
    ) -> AsyncIterator[bytes]:
        """Stage ``name``'s streamed answer, chunk by chunk, as its dependant's request body.

        Consumed by the request to the dependant as fast as it takes it: a slow reader slows
        the source (socket buffers only in between). Within the source's timeoutSeconds."""
        stage = self.topology.stages[name]
        end = run.started[name] + stage.timeout_seconds
        chunks = upstream.iter_chunks()
        try:
            while True:
                # Only the wait for the source is timed, never a yield: the reader's time is its
                # own, and a timeout must not land in the task that pulls this generator.
                try:
                    async with asyncio.timeout(max(0.0, end - time.perf_counter())):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                yield chunk
        except TimeoutError:
            run.broken[name] = StageError(
                name,
                f"stage {name!r} did not finish its stream within its timeoutSeconds"
                f" ({stage.timeout_seconds:g} s)",
                504,
            )
            raise
        except (UpstreamClosed, UpstreamProtocolError, OSError) as error:
            run.broken[name] = StageError(name, f"stream of stage {name!r} broke: {error}")
            raise
        finally:  # a reader that stopped (failed, cut off) closes the source: it stops producing
            run.ended[name] = time.perf_counter()
            upstream.release()

    async def _call(
        self,
        stage: StageRoute,
        body: bytes | AsyncIterator[bytes],
        run: _Run,
        context: Context | None,
        stream: bool,
        content_type: str = JSON_TYPE,
    ) -> _Answer:
        name = stage.name
        with self._tracer.start_as_current_span(f"stage {name}", kind=SpanKind.CLIENT) as span:
            headers = {"Content-Type": content_type, "Accept": "*/*" if stream else JSON_TYPE}
            self._propagator.inject(headers, context=context)
            if span.is_recording():
                span.set_attributes({ATTR_PIPELINE: self.topology.pipeline, ATTR_STAGE: name})
            run.started[name] = time.perf_counter()
            try:
                if stage.variants:
                    answer = await self._call_variants(stage, body, headers, run, stream, span)
                else:
                    answer = await self._post(
                        stage, name, stage.timeout_seconds, body, headers, run, stream
                    )
            except StageError as error:
                source = (
                    self.topology.stages[error.stage].depends_on
                    if error.stage in self.topology.stages
                    else ()
                )
                if error.stage == self.topology.output and source and source[0] in run.broken:
                    error = run.broken[source[0]]  # the streamed output broke for its input's fault
                if span.is_recording():
                    span.set_status(Status(StatusCode.ERROR, error.message))
                raise
            finally:
                run.ended[name] = time.perf_counter()
            return answer

    def _variant_order(self, stage: StageRoute, run: _Run) -> tuple[VariantRoute, ...]:
        """The variants to call, in order, by the stage's variantPolicy."""
        variants = stage.variants
        if stage.policy == "weighted":
            return (random.choices(variants, weights=[v.weight for v in variants])[0],)
        if stage.policy == "budget":
            budget = self.topology.latency_budget_ms
            if budget is None:
                return (variants[-1],)
            spent_ms = (time.perf_counter() - run.t0) * 1000
            room_ms = budget - spent_ms - stage.reserve_ms
            fits = [v for v in variants if self._expected_ms(stage, v) <= room_ms]
            return (fits[-1] if fits else variants[0],)
        return variants

    def _expected_ms(self, stage: StageRoute, variant: VariantRoute) -> float:
        seen = self._latencies[target(stage.name, variant.name)]
        if len(seen) >= LATENCY_MIN_SAMPLES:
            return 1000 * sorted(seen)[int(0.9 * (len(seen) - 1))]
        return float(variant.latency_ms or 0)

    async def _call_variants(
        self,
        stage: StageRoute,
        body: bytes | AsyncIterator[bytes],
        headers: dict[str, str],
        run: _Run,
        stream: bool,
        span: Span,
    ) -> _Answer:
        """Call the variants the policy picks; a cascade goes on past a failure or an answer
        below minConfidence, and the last one called answers (or fails) for the stage."""
        assert isinstance(body, bytes)  # input: stream stages have no variants (validated)
        order = self._variant_order(stage, run)
        attempts = run.attempts.setdefault(stage.name, [])
        try:
            for index, variant in enumerate(order):
                last = index == len(order) - 1
                name = target(stage.name, variant.name)
                began = time.perf_counter()
                try:
                    answer = await self._post(
                        stage, name, variant.timeout_seconds, body, headers, run, stream
                    )
                except StageError as error:
                    seconds = time.perf_counter() - began
                    self.metrics.variant_call(stage.name, variant.name, "failed", seconds)
                    attempts.append(VariantAttempt(variant.name, "failed", seconds * 1000))
                    if last:
                        raise
                    log.info("%s; trying the next variant", error.message)
                    continue
                seconds = time.perf_counter() - began
                self._latencies[name].append(seconds)
                confidence = answer.confidence
                low = confidence is not None and confidence < stage.min_confidence
                outcome = "low_confidence" if low and not last else "served"
                self.metrics.variant_call(stage.name, variant.name, outcome, seconds)
                attempts.append(VariantAttempt(variant.name, outcome, seconds * 1000, confidence))
                if outcome == "served":
                    return answer
                if answer.response is not None:  # a stream that will not be read: closed
                    answer.response.close()
            raise AssertionError("the last variant serves or fails")  # pragma: no cover
        finally:
            if span.is_recording() and attempts:
                span.set_attributes(
                    {ATTR_VARIANT: attempts[-1].variant, ATTR_VARIANT_ATTEMPTS: len(attempts)}
                )

    async def _post(
        self,
        stage: StageRoute,
        name: str,
        timeout_seconds: float,
        body: bytes | AsyncIterator[bytes],
        headers: dict[str, str],
        run: _Run,
        stream: bool,
    ) -> _Answer:
        """POST to ``name``: the stage, or one of its variants (<stage>/<variant>)."""
        url = self._endpoints[name]
        pool, path = self._pools[name]
        stage_name = stage.name
        who = repr(stage_name)
        if name != stage_name:
            who += f" (variant {name.split('/', 1)[1]!r})"
        try:
            async with asyncio.timeout(timeout_seconds):
                response = await pool.request("POST", path, list(headers.items()), body)
                try:
                    run.cache[stage_name] = visible(response.header(CACHE_HEADER))
                    if not 200 <= response.status <= 299:
                        detail = (await response.read())[:300].decode("utf-8", "replace")
                        message = f"stage {who} answered HTTP {response.status}: {detail.strip()}"
                        if response.status in OVERLOADED:
                            # Backpressure reaches the client: it should slow down, not give up.
                            given = (response.header("Retry-After") or "").strip()
                            delta = given.isascii() and given.isdigit() and len(given) < 8
                            retry_after = given if delta else "1"
                            raise StageError(stage_name, message, 503, retry_after)
                        raise StageError(stage_name, message)
                    confidence = confidence_of(response.header(CONFIDENCE_HEADER))
                    if stream:
                        return _Answer(response=response, confidence=confidence)
                    data = await response.read()
                except BaseException:
                    response.release()
                    raise
                response.release()
        except TimeoutError:
            raise StageError(
                stage_name,
                f"stage {who} did not answer within its timeoutSeconds ({timeout_seconds:g} s)",
                504,
            ) from None
        except OSError as error:
            raise StageError(
                stage_name, f"stage {who} at {url} failed: {type(error).__name__}: {error}"
            ) from None
        try:
            json.loads(data)
        except ValueError as error:
            raise StageError(stage_name, f"stage {who} answered invalid JSON: {error}") from None
        return _Answer(body=data, confidence=confidence)

    async def _stream(
        self, request: Request, upstream: UpstreamResponse, deadline: float | None
    ) -> tuple[Reply, str]:
        """Pass the output stage's body through as it arrives (see dataplane/router/stream.py)."""
        output = self.topology.output
        end = time.perf_counter() + self.topology.stages[output].timeout_seconds
        if deadline is not None:
            end = min(end, deadline)
        return await relay(request, upstream, output, end, self.topology.pipeline)
