"""The gateway: a streaming reverse proxy to one stage, with cache, coalescing and batching.

Requests to the stage endpoint (``POST /``, by the stage HTTP contract) are read whole, looked
up in the cache by canonical key, coalesced with identical in-flight requests and, when the
stage declares a batch path, batched. Everything else streams straight through. The admin
listener serves ``/metrics``, ``/live`` and ``/ready`` on a port of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from penstock.contract.wire import (
    ATTR_BATCH_SIZE,
    ATTR_CACHE_HIT,
    ATTR_COST_CENTER,
    ATTR_COST_USD,
    ATTR_INPUT_TOKENS,
    ATTR_OUTPUT_TOKENS,
    ATTR_PIPELINE,
    ATTR_SAVED_REASON,
    ATTR_SAVED_SECONDS,
    ATTR_SAVED_USD,
    ATTR_STAGE,
    ATTR_VARIANT,
    CACHE_HEADER,
    CACHE_ITEMS_HEADER,
    CACHE_SIMILARITY_HEADER,
    CACHE_TIER_HEADER,
    CONFIDENCE_HEADER,
)
from penstock.dataplane.gateway.answers import Answer, Failure, Outcome
from penstock.dataplane.gateway.batching import Batcher, BatchResponse, Send
from penstock.dataplane.gateway.cache import (
    MEMCACHED_SCHEME,
    Entry,
    Lookup,
    Store,
    cache_key,
    signing_key,
    stored_confidence,
)
from penstock.dataplane.gateway.coalesce import Coalescer
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.gateway.exchange import (
    Produced,
    Record,
    charset_problem,
    declares_json,
    failure_response,
    respond,
)
from penstock.dataplane.gateway.leases import Claim, Lease, Leases
from penstock.dataplane.gateway.packing import CallerHeaders, Packer, PackItem
from penstock.dataplane.gateway.savings import SavingsEstimator
from penstock.dataplane.gateway.semantic import (
    Probe,
    SemanticHit,
    SemanticTier,
    same_answer,
    semantic_tier,
)
from penstock.dataplane.gateway.sharing import (
    may_reuse,
    request_rules,
    same_variant,
)
from penstock.dataplane.gateway.stage import (
    NOT_FORWARDED_REQUEST,
    NOT_FORWARDED_STREAMED,
    OpenStream,
    StageClient,
    describe,
    strip_headers,
)
from penstock.dataplane.gateway.telemetry import GatewayMetrics
from penstock.dataplane.gateway.tiers import Tiers, cache_tiers
from penstock.dataplane.gateway.usage import token_usage
from penstock.dataplane.http1 import Answer as Reply
from penstock.dataplane.http1 import BodyTooLarge, Request, Response
from penstock.dataplane.jsonbody import JsonBodyError, canonical, loads, parse
from penstock.dataplane.limits import BodyTimeout, Identity
from penstock.dataplane.server import Server, build_tracer

log = logging.getLogger("penstock.gateway")

STAGE_ENDPOINT = "/"


def hit_headers(entry: Entry, extra: dict[str, str]) -> dict[str, str]:
    """A cached answer's headers: its content type and confidence, as the stage sent them."""
    headers = {"Content-Type": entry.content_type, CACHE_HEADER: "hit", **extra}
    if entry.confidence is not None:
        headers[CONFIDENCE_HEADER] = entry.confidence
    return headers


class Gateway(Server):
    """One gateway instance: its own listeners, client pool, metrics registry and tracer."""

    def __init__(self, config: GatewayConfig, *, span_exporter: SpanExporter | None = None):
        self.config = config
        self.metrics = GatewayMetrics(config)
        self.savings = SavingsEstimator(config.hourly_cost)
        identity = Identity(f"the gateway of stage {config.stage!r}", {"stage": config.stage})
        tracer = build_tracer(
            "penstock.gateway",
            {
                "service.name": f"{config.pipeline}.{config.stage}"
                if config.pipeline
                else config.stage,
                "service.namespace": config.namespace,
                ATTR_PIPELINE: config.pipeline,
                ATTR_STAGE: config.stage,
                **({ATTR_VARIANT: config.variant} if config.variant else {}),
            },
            config.otlp_endpoint,
            config.sampling_ratio,
            span_exporter,
        )
        super().__init__(identity, self.metrics.registry, tracer)
        self.not_ready_reason = "waiting for the stage's /healthz"
        self._coalescer: Coalescer[Produced] = Coalescer()
        self._key_headers = frozenset(config.cache_key_headers)
        self.stage = StageClient(config)
        self.cache: Tiers | None = None
        self.semantic: SemanticTier | None = None
        self.leases: Leases | None = None
        self._batcher: Batcher | None = None
        self._readiness: asyncio.Task[None] | None = None
        self._stores: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        config = self.config
        self.cache = cache_tiers(config)
        self.semantic = semantic_tier(config) if self.cache is not None else None
        if self.semantic is not None:
            await self.semantic.start()
        shared_url = config.shared_redis_url or ""
        # Leases need Redis's SET NX and PUBLISH: on Memcached, coalescing stays per replica.
        if config.shared_cache_key and shared_url and not shared_url.startswith(MEMCACHED_SCHEME):
            self.leases = Leases(
                shared_url,
                password=config.shared_redis_password,
                sign_key=signing_key(config.shared_cache_key),
                timeout=config.redis_timeout_ms / 1000,
                cluster=config.shared_redis_cluster,
            )
            await self.leases.start()
        if config.batching:
            send: Send = self._send_batch
            if config.pack is not None:
                packer = Packer(
                    self._call_alone,
                    config.pack,
                    stage=config.stage,
                    on_pack=self.metrics.pack_items.observe,
                    on_fallback=self.metrics.pack_fallback,
                )
                send = packer.send
            self._batcher = Batcher(
                send,
                stage=config.stage,
                max_size=config.batch_max_size,
                max_latency=config.batch_max_latency_ms / 1000,
                max_inflight=config.batch_max_inflight,
                max_queue=config.batch_queue_limit,
                timeout=config.timeout_seconds,
            )
            self._batcher.on_batch = self.metrics.batch_size.observe
            self._batcher.on_done = self.savings.batch_done
        await self.open(
            self._handle,
            config.listen,
            config.admin_listen,
            config.limits,
            max_body_bytes=config.max_body_bytes,
        )
        self._readiness = asyncio.get_running_loop().create_task(self._readiness_loop())

    async def stop(self) -> None:
        self.ready = False
        self.not_ready_reason = "shutting down"
        if self._readiness is not None:
            self._readiness.cancel()
            await asyncio.gather(self._readiness, return_exceptions=True)
        await self.close()
        await self.stored()
        if self._batcher is not None:
            await self._batcher.close()
        self.stage.close()
        if self.cache is not None:
            await self.cache.close()
        if self.semantic is not None:
            await self.semantic.close()
        if self.leases is not None:
            await self.leases.close()
        self.close_tracer()

    def _after_answer(self, work: Coroutine[Any, Any, None]) -> None:
        """Cache writes run once the answer is on its way, never before it."""
        task = asyncio.get_running_loop().create_task(work)
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def stored(self) -> None:
        """Wait for the cache stores already started (they run after the answer is sent)."""
        if self._stores:
            await asyncio.gather(*list(self._stores), return_exceptions=True)

    async def _readiness_loop(self) -> None:
        """Ready after /healthz answers 200 and the warmup succeeded; 3 failed checks undo it."""
        delay = 0.05
        while True:
            problem = await self.stage.healthy() or await self.stage.warmup(self._progress)
            if problem:
                self.not_ready_reason = problem
                log.info("stage %s not ready: %s", self.config.stage, self.not_ready_reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.ready = True
            self.metrics.ready.set(1)
            self.not_ready_reason = ""
            log.info("stage %s ready", self.config.stage)
            failures = 0
            while failures < 3:
                await asyncio.sleep(self.config.health_interval_seconds)
                problem = await self.stage.healthy()
                if problem:
                    self.not_ready_reason = problem
                failures = failures + 1 if problem else 0
            self.ready = False
            self.metrics.ready.set(0)
            log.warning("stage %s no longer ready: %s", self.config.stage, self.not_ready_reason)
            delay = 0.05

    def _progress(self, step: str) -> None:
        self.not_ready_reason = step

    def readiness(self) -> dict[str, Any]:
        if self.ready:
            return {"stage": self.config.stage}
        return {"stage": self.config.stage, "reason": self.not_ready_reason}

    # ----------------------------------------------------------------- proxy

    async def _handle(self, request: Request) -> Reply:
        started = time.perf_counter()
        record = Record()
        metrics = self.metrics
        metrics.inflight.inc()
        try:
            if not self._tracing:  # fast path: no span, no context switch
                return await self._serve(request, record)
            context = self._propagator.extract(request.headers)
            with self._tracer.start_as_current_span(
                f"{request.method} {self.config.stage}", context=context, kind=SpanKind.SERVER
            ) as span:
                response = await self._serve(request, record)
                if span.is_recording():
                    span.set_attributes(
                        {
                            ATTR_PIPELINE: self.config.pipeline,
                            ATTR_STAGE: self.config.stage,
                            ATTR_COST_CENTER: self.config.cost_center,
                            ATTR_CACHE_HIT: bool(record.cache_hit),
                            ATTR_COST_USD: record.cost,
                            "http.request.method": request.method,
                            "url.path": request.path,
                            "http.response.status_code": response.status,
                        }
                    )
                    if record.batch_size is not None:
                        span.set_attribute(ATTR_BATCH_SIZE, record.batch_size)
                    if record.saving is not None:
                        span.set_attributes(
                            {
                                ATTR_SAVED_REASON: record.saving.reason,
                                ATTR_SAVED_SECONDS: record.saving.seconds,
                                ATTR_SAVED_USD: record.saving.usd,
                            }
                        )
                    if record.usage is not None:
                        span.set_attributes(
                            {
                                ATTR_INPUT_TOKENS: record.usage.input_tokens,
                                ATTR_OUTPUT_TOKENS: record.usage.output_tokens,
                            }
                        )
                    if response.status >= 500:
                        span.set_status(Status(StatusCode.ERROR, record.outcome))
                return response
        except Exception as error:  # a bug: a JSON 500 naming the stage, logged
            log.exception("stage %s: unexpected error serving %s", self.config.stage, request.path)
            message = f"gateway error in front of stage {self.config.stage!r}: {describe(error)}"
            failure = Failure(500, message, self.config.stage, "gateway_error")
            return failure_response(failure, record, "bypass")
        finally:
            metrics.inflight.dec()
            metrics.duration.observe(time.perf_counter() - started)
            metrics.request(record.outcome)
            if record.cost > 0:
                metrics.cost.inc(record.cost)
            if record.saving is not None:
                metrics.saved(record.saving)
            if record.usage is not None:
                metrics.tokens(record.usage.input_tokens, record.usage.output_tokens)

    def _client_error(self, message: str) -> Failure:
        return Failure(400, message, self.config.stage, "client_error")

    async def _serve(self, request: Request, record: Record) -> Reply:
        config = self.config
        if not self.ready:
            message = f"stage {config.stage!r} is not ready: {self.not_ready_reason}"
            return failure_response(
                Failure(503, message, config.stage, "not_ready"), record, "bypass"
            )
        if (
            request.method == "POST"
            and request.path == config.batch_path
            and self._batcher is not None
            and self.cache is not None
            and config.pack is None
            and not config.stream_input
        ):
            return await self._serve_items(request, record)
        # Other paths, and a streamed input (input: stream), go through as they arrive.
        if request.method != "POST" or request.path != STAGE_ENDPOINT or config.stream_input:
            body_stream = request.body.iter_any() if request.body_exists else None
            result = await self._call_stage(request, body_stream, always_stream=True)
            return await self._respond(request, result, record, "bypass", sharers=1)

        body = await self._read_body(request)
        if isinstance(body, Failure):
            return failure_response(body, record, "bypass")
        canonical = self._canonical(request, body)
        if isinstance(canonical, Failure):
            return failure_response(canonical, record, "bypass")
        if canonical is None:  # not JSON: no key, so no cache and no coalescing
            result = await self._call_stage(request, body)
            self._called(result, record)
            return await self._respond(request, result, record, "bypass", sharers=1)

        material = self._key_material(request, request.method, request.target)
        key = cache_key(body=canonical, **material)
        rules = request_rules(request.headers)
        cache_state = "bypass"
        probe: Probe | None = None
        if self.cache is not None and rules.lookup:
            metrics = self.metrics
            found = await self.cache.get(key, request.headers, metrics.tier_lookup)
            lookup, entry = found.lookup, found.entry
            metrics.lookup(lookup.value)
            if lookup is Lookup.HIT and entry is not None:
                record.cache_hit = True
                record.saving = self.savings.hit("cache")
                if found.fill is not None:
                    self._after_answer(found.fill(metrics.tier_fill))
                return Response(
                    status=entry.status,
                    body=entry.body,
                    headers=hit_headers(entry, {CACHE_TIER_HEADER: found.tier or ""}),
                )
            record.cache_hit = False
            cache_state = "miss" if lookup is Lookup.MISS else "bypass"
            if self.semantic is not None and lookup is Lookup.MISS:
                try:
                    probe, hit = await self._semantic_lookup(request, canonical, material)
                except Exception:  # a bug in the semantic path: still only a miss
                    log.exception("semantic lookup failed")
                    probe, hit = None, None
                    metrics.semantic("error")
                if probe is not None and hit is not None:
                    return self._semantic_answer(request, body, probe, hit, record)
        deadline = asyncio.get_running_loop().time() + config.timeout_seconds

        async def call() -> Produced:
            if self._batcher is not None:
                item = body if config.pack is None else PackItem(body, self._identity(request))
                return Produced(await self._batcher.submit(item, deadline), request.headers)
            outcome = await self._call_stage(request, body, deadline=deadline)
            return Produced(outcome, request.headers)

        lease: Lease | None = None
        across: Entry | None = None  # another replica's answer, read from the tiers
        across_tier = "shared"

        async def work() -> Produced:
            """The call, or, with a shared tier, the call of whichever replica leads."""
            nonlocal lease, across, across_tier
            if self.leases is None or self.cache is None or not (rules.lookup and rules.store):
                return await call()
            claim: Claim | None
            claim, lease = await self.leases.claim(key)
            # Read the tiers again (uncounted: this request's lookup is counted) when another
            # replica's answer may be there: it said it is done, or it stored and let go of the
            # lease between this request's lookup and its claim.
            recheck = claim is Claim.OURS
            if claim is Claim.THEIRS:
                claim, lease = await self.leases.wait(key, deadline)
                recheck = claim is None  # not after taking over a dead holder's lease
            if recheck:
                found = await self.cache.get(key, request.headers)
                if found.entry is not None:
                    if lease is not None:
                        self._after_answer(self.leases.release(lease))
                        lease = None
                    if found.fill is not None:
                        self._after_answer(found.fill(self.metrics.tier_fill))
                    across, across_tier = found.entry, found.tier or "shared"
                    self.metrics.lease("joined")
                    answer = Answer(
                        found.entry.status,
                        tuple(hit_headers(found.entry, {CACHE_TIER_HEADER: across_tier}).items()),
                        found.entry.body,
                    )
                    return Produced(answer, request.headers)
            self.metrics.lease("led" if lease is not None else "alone")
            try:
                return await call()
            except BaseException:
                if lease is not None:
                    self._after_answer(self.leases.release(lease))
                raise

        if rules.join and not self._coalescer.passes(key):
            shared = await self._coalescer.run(key, work)
            produced, leader, sharers = shared.value, shared.leader, shared.sharers
        else:  # wants a fresh answer, or its answers are not shared: call on its own
            produced, leader, sharers = await call(), True, 1
        if leader and across is not None:
            record.cache_hit = True
            record.saving = self.savings.hit("coalesced")
            self.metrics.coalesced.inc()
            return Response(
                status=across.status,
                body=across.body,
                headers=hit_headers(across, {CACHE_TIER_HEADER: across_tier}),
            )
        if not leader:
            if not self._may_take(key, produced, request):  # its own call, in its own time
                result = (await call()).outcome
                self._called(result, record)
                return await self._respond(request, result, record, cache_state, sharers=1)
            self.metrics.coalesced.inc()
            if isinstance(produced.outcome, Answer):
                record.saving = self.savings.coalesced(produced.outcome.held_seconds)
        else:
            self._called(produced.outcome, record)
            if self.cache is not None and rules.store and isinstance(produced.outcome, Answer):
                # Stored after the answer is on its way: a miss costs one Redis round trip.
                self._after_answer(self._store(key, produced, probe, lease))
            elif lease is not None and self.leases is not None:
                self._after_answer(self.leases.release(lease))
        return await self._respond(request, produced.outcome, record, cache_state, sharers)

    def _key_material(self, request: Request, method: str, path: str) -> dict[str, Any]:
        """Everything of a cache key but the body."""
        config = self.config
        return {
            "namespace": config.namespace,
            "pipeline": config.pipeline,
            # Variants of a stage never share entries (the shared tier is the stage's).
            "stage": config.stage if not config.variant else f"{config.stage}/{config.variant}",
            "stage_image": config.stage_image,
            "model_version": config.model_version,
            "method": method,
            "path": path,
            "headers": request.headers,
            "key_headers": config.cache_key_headers,
            "generation": config.cache_generation,
        }

    async def _serve_items(self, request: Request, record: Record) -> Reply:
        """A batch sent to the stage's batch path: each item is looked up as a ``POST /`` of
        it would be (so batches and single requests share entries), each distinct miss goes
        once to the batcher (so to the batch path, with whatever else is queued), and the
        answers come back in the items' order."""
        assert self.cache is not None and self._batcher is not None
        body = await self._read_body(request)
        if isinstance(body, Failure):
            return failure_response(body, record, "bypass")
        problem = charset_problem(request.headers.get("Content-Type"))
        items: Any = None
        if problem is None:
            try:
                items = loads(body)
            except JsonBodyError as error:
                problem = str(error)
        if problem is None and (not isinstance(items, list) or not items):
            problem = f"is not a non-empty JSON array of items, as {self.config.batch_path} takes"
        if problem is not None:
            return failure_response(
                self._client_error(f"batch request body {problem}"), record, "bypass"
            )
        material = self._key_material(request, "POST", STAGE_ENDPOINT)
        texts: dict[str, bytes] = {}  # key -> the item's canonical text, each key once
        keys = []
        for item in items:
            text = canonical(item)
            key = cache_key(body=text, **material)
            texts.setdefault(key, text)
            keys.append(key)
        rules = request_rules(request.headers)
        answers: dict[str, bytes] = {}
        if rules.lookup:
            found = await asyncio.gather(
                *(self.cache.get(key, request.headers, self.metrics.tier_lookup) for key in texts)
            )
            for key, hit in zip(texts, found, strict=True):
                self.metrics.lookup(hit.lookup.value)
                entry = hit.entry
                if entry is None or hit.lookup is not Lookup.HIT:
                    continue
                if entry.status == 200 and declares_json(entry.content_type):  # an item's answer
                    answers[key] = entry.body
                    if hit.fill is not None:
                        self._after_answer(hit.fill(self.metrics.tier_fill))
        misses = [key for key in texts if key not in answers]
        deadline = asyncio.get_running_loop().time() + self.config.timeout_seconds
        outcomes = await asyncio.gather(
            *(self._batcher.submit(texts[key], deadline) for key in misses)
        )
        for key, outcome in zip(misses, outcomes, strict=True):
            if isinstance(outcome, Failure):  # the batch fails as the stage's batch call would
                return failure_response(outcome, record, "miss")
            assert isinstance(outcome, Answer)
            self._called(outcome, record)
            answers[key] = outcome.body
            if rules.store:
                self._after_answer(self._store(key, Produced(outcome, request.headers)))
        hits = len(keys) - len(misses)
        record.cache_hit = not misses
        if record.cache_hit:
            record.saving = self.savings.hit("cache")
        state = "hit" if not misses else ("miss" if rules.lookup else "bypass")
        return Response(
            status=200,
            body=b"[" + b",".join(answers[key] for key in keys) + b"]",
            headers={
                "Content-Type": "application/json",
                CACHE_HEADER: state,
                CACHE_ITEMS_HEADER: f"{hits}/{len(keys)}",
            },
        )

    def _called(self, outcome: Outcome | OpenStream, record: Record) -> None:
        """A stage call answered: feed the savings estimates; the tokens it reports."""
        if not isinstance(outcome, Answer) or not 200 <= outcome.status <= 299:
            return
        self.savings.answered(outcome.held_seconds)
        if outcome.batch_size is not None:
            record.saving = self.savings.batched(outcome.held_seconds)
        record.usage = token_usage(outcome.headers, outcome.body)

    def _canonical(self, request: Request, body: bytes) -> bytes | Failure | None:
        """The body's canonical JSON text (the key material), a 400, or None: not JSON, so
        passed through without a key (only when it is not declared JSON and not batched)."""
        content_type = request.headers.get("Content-Type")
        declared = declares_json(content_type)
        if not body:
            if self._batcher is not None:
                return self._client_error("request body is empty, not JSON")
            return None
        problem = charset_problem(content_type)
        if problem is None:
            try:
                return parse(body)[1]
            except JsonBodyError as error:
                problem = str(error)
        if self._batcher is not None or declared:
            return self._client_error(f"request body {problem}")
        return None

    def _may_take(self, key: str, produced: Produced, request: Request) -> bool:
        """May a follower have the answer the leader's call produced?"""
        outcome = produced.outcome
        if isinstance(outcome, OpenStream):  # streamed to the leader's client: call again
            return False
        if isinstance(outcome, Failure):  # made by the gateway: nothing of the leader's in it
            return True
        sharing = produced.sharing
        if not sharing.shareable:
            self._coalescer.unshareable(key)
        seen = outcome.batch_size is None
        if not may_reuse(sharing, self._key_headers, produced.made_for, headers_seen=seen):
            return False
        return same_variant(sharing, produced.made_for, request.headers)

    async def _semantic_lookup(
        self, request: Request, canonical: bytes, material: dict[str, Any]
    ) -> tuple[Probe | None, SemanticHit | None]:
        assert self.semantic is not None and self.cache is not None
        # The scope: the exact key without the body (image, model, path, key headers).
        probe = await self.semantic.probe(canonical, cache_key(body=None, **material))
        if not isinstance(probe, Probe):
            self.metrics.semantic(probe)
            return None, None
        hit = await self.semantic.find(probe, self.cache, request.headers)
        self.metrics.semantic("hit" if hit is not None else "miss")
        return probe, hit

    def _semantic_answer(
        self, request: Request, body: bytes, probe: Probe, hit: SemanticHit, record: Record
    ) -> Response:
        assert self.semantic is not None
        record.cache_hit = True
        if hit.fill is not None:
            self._after_answer(hit.fill(self.metrics.tier_fill))
        if self.semantic.should_verify():  # the stage is asked anyway: nothing saved
            self._after_answer(self._verify(request, body, probe, hit))
        else:
            record.saving = self.savings.hit("semantic")
        return Response(
            status=hit.entry.status,
            body=hit.entry.body,
            headers=hit_headers(
                hit.entry,
                {
                    CACHE_TIER_HEADER: "semantic",
                    CACHE_SIMILARITY_HEADER: f"{hit.similarity:.3f}",
                },
            ),
        )

    async def _verify(self, request: Request, body: bytes, probe: Probe, hit: SemanticHit) -> None:
        """Ask the stage too; a different answer takes the stored input out of the index."""
        assert self.semantic is not None
        result = await self._call_stage(request, body)
        if isinstance(result, OpenStream):
            result.response.close()
            self.metrics.verification("error")
        elif isinstance(result, Answer) and 200 <= result.status <= 299:
            same = same_answer(hit.entry.body, result.body)
            self.metrics.verification("same" if same else "different")
            if not same:
                log.info("semantic false hit (similarity %.3f): forgotten", hit.similarity)
                self.semantic.forget(probe, hit.key)
        else:
            self.metrics.verification("error")

    async def _store(
        self, key: str, produced: Produced, probe: Probe | None = None, lease: Lease | None = None
    ) -> None:
        """Store the answer; then drop the lease other replicas wait on (stored or not)."""
        try:
            await self._store_answer(key, produced, probe)
        finally:
            if lease is not None and self.leases is not None:
                await self.leases.release(lease)

    async def _store_answer(self, key: str, produced: Produced, probe: Probe | None) -> None:
        assert self.cache is not None
        answer = produced.outcome
        assert isinstance(answer, Answer)
        if not 200 <= answer.status <= 299:
            return
        if any(name.lower() == "content-encoding" for name, _ in answer.headers):
            return  # the envelope keeps the content type only
        sharing = produced.sharing
        if not sharing.shareable:
            self._coalescer.unshareable(key)
        seen = answer.batch_size is None
        if not may_reuse(sharing, self._key_headers, produced.made_for, headers_seen=seen):
            return  # the stage said this answer must not be shared, or it is a caller's own
        confidence = stored_confidence(answer.header(CONFIDENCE_HEADER))
        entry = Entry(answer.status, answer.content_type, answer.body, confidence)
        stored = await self.cache.put(
            key,
            entry,
            vary=sharing.vary,
            headers=produced.made_for,
            ttl_seconds=sharing.ttl_seconds,
            on_store=self.metrics.tier_store,
        )
        self.metrics.store(stored.value)
        if stored is Store.STORED and probe is not None and self.semantic is not None:
            self.semantic.remember(probe, key)
        if stored is Store.ERROR:
            log.debug("cache store skipped: %s", self.cache.last_error)

    async def _read_body(self, request: Request) -> bytes | Failure:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large()
        try:
            return await request.body.read(limit)
        except BodyTooLarge:
            return self._too_large()
        except (BodyTimeout, ConnectionError) as error:
            message = f"request body could not be read: {describe(error)}"
            return Failure(400, message, self.config.stage, "client_error")

    def _too_large(self) -> Failure:
        limit = self.config.max_body_bytes
        message = f"request body is larger than {limit} bytes (--max-body-bytes)"
        return Failure(413, message, self.config.stage, "client_error")

    def _upstream_headers(self, request: Request, streamed: bool) -> list[tuple[str, str]]:
        drop = NOT_FORWARDED_STREAMED if streamed else NOT_FORWARDED_REQUEST
        headers = strip_headers(request.headers, drop)
        replaced: dict[str, str] = {}
        forwarded = request.remote
        if forwarded:
            previous = request.headers.get("X-Forwarded-For")
            replaced["x-forwarded-for"] = f"{previous}, {forwarded}" if previous else forwarded
        if self._tracing:
            self._propagator.inject(replaced)
        if replaced:  # set, as a mapping would: every earlier value of the name goes
            names = {name.lower() for name in replaced}
            headers = [(name, value) for name, value in headers if name.lower() not in names]
            headers += replaced.items()
        return headers

    async def _call_stage(
        self,
        request: Request,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        always_stream: bool = False,
        deadline: float | None = None,
    ) -> Outcome | OpenStream:
        headers = self._upstream_headers(request, streamed=not isinstance(body, bytes))
        path_qs = request.target
        return await self.stage.call(
            request.method, path_qs, headers, body, always_stream=always_stream, deadline=deadline
        )

    async def _send_batch(self, items: list[bytes]) -> BatchResponse | Failure:
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if self._tracing:
            self._propagator.inject(headers)
        return await self.stage.send_batch(items, headers)

    def _identity(self, request: Request) -> CallerHeaders:
        """The caller, as far as the answer may depend on it: its cache key headers."""
        found = ((name, request.headers.get(name)) for name in self.config.cache_key_headers)
        return tuple((name, value) for name, value in found if value is not None)

    async def _call_alone(self, body: bytes, identity: CallerHeaders) -> Outcome:
        """One POST / of a packed prompt or of a body sent alone (never streamed back), with
        its caller's key headers."""
        # Accept is part of who asked, not of the call: a packed call is read whole, as JSON.
        headers = [("Content-Type", "application/json")]
        headers += [(name, value) for name, value in identity if name.lower() != "accept"]
        if self._tracing:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            headers += carrier.items()
        result = await self.stage.call("POST", STAGE_ENDPOINT, headers, body)
        if isinstance(result, OpenStream):  # packing needs the whole text
            result.response.close()
            message = f"stage {self.config.stage!r} streamed its answer to a packed call"
            return Failure(502, message, self.config.stage, "upstream_error")
        return result

    async def _respond(
        self,
        request: Request,
        result: Outcome | OpenStream,
        record: Record,
        cache_state: str,
        sharers: int,
    ) -> Reply:
        return await respond(request, result, record, cache_state, sharers, self.config)
