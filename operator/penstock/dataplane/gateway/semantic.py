"""The semantic tier: an exact miss answered with the stored answer of a similar input.

After an exact miss the request's text (``--semantic-text-field``, or a chat's last message) is
embedded by the embedder stage, and the gateway's index finds stored inputs with an equal guard
(penstock/semantic/guards.py: numbers, identifiers, negations, opposites, exact fields, the
conversation before the last message, and the exact key's scope: image, model, method, path,
key headers) and a cosine over the policy's thresholds. The index points at exact cache keys;
the answer itself is read from the tiers, so a semantic hit is never older than its entry, and
one the tiers dropped is forgotten. An answer is indexed once it was stored, so nothing a
caller may not share (a private answer) is ever found. Every failure (embedder slow or down,
no text) is a plain miss, counted.

A sampled share of semantic hits (``--semantic-verify-fraction``) is also asked of the stage
after the answer was sent; a different answer is a false hit: counted, and the input is taken
out of the index so it never answers that way again.

With a disk tier the index outlives the process: a checksummed snapshot in the disk tier's
directory, written (to a temporary name, renamed) at most every ``SNAPSHOT_SECONDS`` while it
changes and on shutdown, and read back at start. Its keys carry the cache generation and the
whole scope, so a snapshot of an older generation or another image never matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from penstock.dataplane.gateway.cache import Entry
from penstock.dataplane.gateway.config import GatewayConfig
from penstock.dataplane.gateway.disk import write_atomically
from penstock.dataplane.gateway.tiers import Fill, Tiers
from penstock.dataplane.jsonbody import JsonBodyError, parse
from penstock.dataplane.upstream import UpstreamClosed, UpstreamProtocolError, pool_for
from penstock.semantic.guards import NotSemantic, semantic_input
from penstock.semantic.index import (
    CorruptSnapshot,
    SemanticIndex,
    Vector,
    encode_snapshot,
    unit,
)
from penstock.semantic.policy import Policy

log = logging.getLogger("penstock.gateway")

_CANDIDATES = 4  # most similar stored inputs the policy is asked about, per lookup
MAX_EMBEDDING_BYTES = 1 << 20  # 384 floats as JSON are ~8 KB
SNAPSHOT_SECONDS = 30.0
SNAPSHOT_NAME = "semantic-index"


@dataclass(frozen=True)
class Probe:
    """A request's comparable form: its text, guard digest and embedding."""

    text: str
    guard: str
    vector: Vector


@dataclass(frozen=True)
class SemanticHit:
    entry: Entry
    key: str
    """The exact key of the stored input that answered."""
    similarity: float
    fill: Fill | None


class EmbedError(Exception):
    pass


class SemanticTier:
    def __init__(
        self,
        embedder_url: str,
        policy: Policy,
        *,
        max_entries: int,
        text_field: str = "text",
        ignore_fields: tuple[str, ...] = (),
        verify_fraction: float = 0.0,
        timeout: float = 1.0,
        rng: random.Random | None = None,
        snapshot: Path | None = None,
    ) -> None:
        self.policy = policy
        self.index = SemanticIndex(max_entries)
        self.snapshot = snapshot
        self._changed = False
        self._saver: asyncio.Task[None] | None = None
        self.text_field = text_field
        self.ignore_fields = ignore_fields
        self.verify_fraction = verify_fraction
        self.timeout = timeout
        self._pool, self._target = pool_for(embedder_url)
        self._rng = rng or random.Random()

    async def start(self) -> None:
        """Read the snapshot, if any, and save the index while it changes."""
        if self.snapshot is None:
            return
        try:
            data = await asyncio.to_thread(self.snapshot.read_bytes)
            self.index = SemanticIndex.restore(data, self.index.max_entries)
            log.info("semantic index: %d inputs read from %s", len(self.index), self.snapshot)
        except FileNotFoundError:
            pass
        except (OSError, CorruptSnapshot) as error:
            log.warning("semantic index: %s not read (%s): starting empty", self.snapshot, error)
        self._saver = asyncio.get_running_loop().create_task(self._save_loop())

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            await self.save()

    async def save(self) -> None:
        """Write the index when it changed since the last save (never raises: a cache)."""
        if self.snapshot is None or not self._changed:
            return
        self._changed = False
        # The entries are copied on the loop (one consistent state, a few ms at 10,000), the
        # bytes made and written in a thread (about 0.1 s at 10,000: never on the loop).
        entries, dimension = self.index.entries(), self.index.dimension
        try:
            data = await asyncio.to_thread(encode_snapshot, dimension, entries)
            await asyncio.to_thread(write_atomically, self.snapshot, data)
        except OSError as error:
            self._changed = True
            log.warning("semantic index: %s not written: %s", self.snapshot, error)

    async def close(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
        await self.save()
        self._pool.close()

    async def _embed(self, text: str) -> Vector:
        body = json.dumps({"text": text}).encode()
        headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._pool.request("POST", self._target, headers, body)
                try:
                    length = response.header("Content-Length") or "0"
                    if not length.isdigit() or int(length) > MAX_EMBEDDING_BYTES:
                        raise EmbedError(
                            f"the embedder's answer is over {MAX_EMBEDDING_BYTES} bytes"
                        )
                    data = await response.read()
                finally:
                    response.release()
        except TimeoutError:
            raise EmbedError(f"the embedder did not answer within {self.timeout:g} s") from None
        except (OSError, UpstreamClosed, UpstreamProtocolError) as error:
            raise EmbedError(f"the embedder failed: {error}") from None
        if response.status != 200:
            raise EmbedError(f"the embedder answered HTTP {response.status}")
        if len(data) > MAX_EMBEDDING_BYTES:
            raise EmbedError(f"the embedder's answer is over {MAX_EMBEDDING_BYTES} bytes")
        try:
            return unit(json.loads(data)["embedding"])
        except Exception as error:  # whatever the embedder sent, a miss (OverflowError, ...)
            raise EmbedError(f"the embedder's answer has no embedding: {error!r}") from None

    async def probe(self, canonical: bytes, scope: str) -> Probe | str:
        """The request's probe, or why there is none ("no_text" or "error")."""
        try:
            value: Any = json.loads(canonical)
            found = semantic_input(value, self.text_field, self.ignore_fields, scope)
        except (ValueError, NotSemantic):
            return "no_text"
        try:
            vector = await self._embed(found.text)
        except EmbedError as error:
            log.debug("semantic lookup skipped: %s", error)
            return "error"
        if self.index.dimension not in (None, vector.shape[0]):  # the embedder changed models
            log.debug(
                "semantic lookup skipped: %d numbers, not %s", vector.shape[0], self.index.dimension
            )
            return "error"
        return Probe(found.text, found.guard, vector)

    async def find(
        self, probe: Probe, tiers: Tiers, headers: Mapping[str, str]
    ) -> SemanticHit | None:
        """The stored answer of the most similar allowed input the tiers still hold."""
        candidates = self.index.candidates(
            probe.guard, probe.vector, self.policy.threshold, _CANDIDATES
        )
        for match in candidates:
            if not self.policy.allows(match.text, probe.text, match.similarity):
                continue
            found = await tiers.get(match.key, headers)
            if found.entry is not None:
                self.index.touch(probe.guard, match.key)
                return SemanticHit(found.entry, match.key, match.similarity, found.fill)
        # A miss is not taken out of the index here: it may be another variant (Vary) of an
        # entry that still answers its own callers. Gone entries age out of the LRU.
        return None

    def remember(self, probe: Probe, key: str) -> None:
        """Index an input whose answer the tiers stored under ``key``."""
        self._changed = True
        try:
            self.index.add(probe.guard, key, probe.text, probe.vector)
        except ValueError as error:  # the embedder changed length since the probe: start over
            log.info("semantic index restarted: %s", error)
            self.index = SemanticIndex(self.index.max_entries)

    def forget(self, probe: Probe, key: str) -> None:
        self._changed = True
        self.index.remove(probe.guard, key)

    def should_verify(self) -> bool:
        return self.verify_fraction > 0 and self._rng.random() < self.verify_fraction


def semantic_tier(config: GatewayConfig) -> SemanticTier | None:
    if config.semantic_embedder_url is None:
        return None
    return SemanticTier(
        config.semantic_embedder_url,
        Policy(config.semantic_threshold, config.semantic_one_slot_threshold),
        max_entries=config.semantic_max_entries,
        text_field=config.semantic_text_field,
        ignore_fields=config.semantic_ignore_fields,
        verify_fraction=config.semantic_verify_fraction,
        timeout=config.semantic_timeout_ms / 1000,
        snapshot=Path(config.disk_cache_dir) / SNAPSHOT_NAME if config.disk_cache_dir else None,
    )


def same_answer(stored: bytes, fresh: bytes) -> bool:
    """Whether two JSON answers are the same document (key order and spacing aside)."""
    try:
        return parse(stored)[1] == parse(fresh)[1]
    except JsonBodyError:
        return stored == fresh
