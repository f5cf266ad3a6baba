"""Coalescing across replicas: a lease per key in the shared tier's Redis.

The first replica to miss a key takes its lease (``SET NX PX`` with a token of its own) and
calls the stage; it renews the lease while the call runs and, once the answer is stored in the
shared tier, drops it and publishes that the key is done. Another replica missing the same key
meanwhile finds the lease taken and waits for that notice, then reads the answer from the shared
tier. A holder that dies stops renewing: its lease expires within ``lease_seconds`` and a waiter
takes it over. An answer that was not stored (not shareable, a failure) leaves the waiters to
call the stage on their own, as the in-replica coalescer's hit-for-pass does.

Lease and channel names are HMACs under the Pipeline's shared-tier key: another Pipeline on the
same Redis can neither see which requests are in flight nor hold ours up. Every step fails open:
with Redis or its notices unavailable, a request goes to the stage on its own, as without a
shared tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from penstock.dataplane.gateway.cache import SlotMap, redis_client

log = logging.getLogger("penstock.gateway.leases")

LEASE_PREFIX = "penstock:lease:v1:"
DONE_PREFIX = "penstock:done:v1:"
LEASE_SECONDS = 2.0

# Drop the lease only when it is still ours (it may have expired and been taken), then say so.
# The channel is an argument, not a key: in a Redis Cluster a script's keys share one slot,
# and a PUBLISH reaches the subscribers on every node.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('PUBLISH', ARGV[3], ARGV[2])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Claim(enum.Enum):
    OURS = "ours"
    """This replica holds the lease: it calls the stage."""
    THEIRS = "theirs"
    """Another replica holds it: wait for its answer."""
    ERROR = "error"
    """No lease could be taken or read: call the stage alone."""


@dataclass
class Lease:
    """A lease this replica holds, renewed until released."""

    name: str
    token: str
    renewing: asyncio.Task[None] | None = field(default=None, repr=False)


class Leases:
    """The leases and done notices of one Pipeline's keys in the shared Redis."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        sign_key: bytes,
        timeout: float,
        lease_seconds: float = LEASE_SECONDS,
        cluster: bool = False,
    ) -> None:
        self._client = redis_client(url, password=password, timeout=timeout, cluster=cluster)
        # The listener blocks on its socket between notices: no read timeout there.
        self._listener = redis_client(
            url, password=password, timeout=timeout, cluster=cluster, read_timeout=False
        )
        self._slots = SlotMap(self._client)
        self._sign_key = sign_key
        self._channel = DONE_PREFIX + self._name(b"done")
        self._timeout = timeout
        self.lease_seconds = lease_seconds
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._release = self._client.register_script(_RELEASE)
        self._renew = self._client.register_script(_RENEW)
        self._listening: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the done notices arrive: only then does a replica wait for another."""

    def _name(self, material: bytes) -> str:
        return hmac.new(self._sign_key, material, hashlib.sha256).hexdigest()[:40]

    def lease_name(self, key: str) -> str:
        return LEASE_PREFIX + self._name(key.encode())

    # ----------------------------------------------------------------- notices

    async def start(self) -> None:
        self._listening = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._listener.pubsub()
            try:
                if isinstance(self._listener, aioredis.RedisCluster):
                    await self._listener.initialize()  # the slots map a subscribe routes by
                await pubsub.subscribe(self._channel)
                self.listening.set()
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None and message.get("type") == "message":
                        data = message.get("data")
                        name = data.decode() if isinstance(data, bytes) else str(data)
                        for future in self._waiting.pop(name, ()):
                            if not future.done():
                                future.set_result(None)
            except (RedisError, OSError, TimeoutError) as error:
                if self.listening.is_set():
                    log.warning(
                        "shared tier notices lost (%s); coalescing within the replica", error
                    )
                self.listening.clear()
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _expect(self, name: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, set()).add(future)
        return future

    def _unexpect(self, name: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[name]

    # ----------------------------------------------------------------- leases

    async def claim(self, key: str) -> tuple[Claim, Lease | None]:
        """Take ``key``'s lease, or learn that another replica holds it."""
        if not self.listening.is_set():
            return Claim.ERROR, None
        name, token = self.lease_name(key), secrets.token_hex(8)
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._slots()
                taken = await self._client.set(
                    name, token, nx=True, px=int(self.lease_seconds * 1000)
                )
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("lease of %s not taken: %s", name, error)
            return Claim.ERROR, None
        if not taken:
            return Claim.THEIRS, None
        lease = Lease(name, token)
        lease.renewing = asyncio.get_running_loop().create_task(self._keep(lease))
        return Claim.OURS, lease

    async def _keep(self, lease: Lease) -> None:
        """Renew the lease every third of its life until it is released."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await self._slots()
                    kept = await self._renew(
                        keys=[lease.name], args=[lease.token, int(self.lease_seconds * 1000)]
                    )
            except (RedisError, OSError, TimeoutError):
                continue  # the next try may land before it expires
            if not kept:
                return  # expired and taken over: the other holder calls too

    async def release(self, lease: Lease) -> None:
        """Drop the lease (the answer is stored, or will not be) and wake the waiters."""
        if lease.renewing is not None:
            lease.renewing.cancel()
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._slots()
                await self._release(
                    keys=[lease.name], args=[lease.token, lease.name, self._channel]
                )
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("lease %s not released (it expires): %s", lease.name, error)

    async def wait(self, key: str, deadline: float) -> tuple[Claim | None, Lease | None]:
        """Wait while another replica holds ``key``'s lease, until ``deadline`` (loop time).

        ``(None, None)``: the holder is done (its answer, if it could be shared, is in the
        shared tier); ``(OURS, lease)``: the holder's lease expired (it died) and this replica
        took it over; ``(ERROR, None)``: the deadline came or Redis failed: call alone.
        """
        loop = asyncio.get_running_loop()
        name = self.lease_name(key)
        while True:
            future = self._expect(name)
            try:
                # Still held? The notice may have come between the claim and this wait.
                async with asyncio.timeout(self._timeout * 2):
                    held = await self._client.exists(name)
                if not held:
                    return None, None
                left = deadline - loop.time()
                if left <= 0:
                    return Claim.ERROR, None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, self.lease_seconds)):
                        await future
                    return None, None
            except (RedisError, OSError, TimeoutError):
                return Claim.ERROR, None
            finally:
                self._unexpect(name, future)
            claim, lease = await self.claim(key)  # no notice for a while: is the holder alive?
            if claim is not Claim.THEIRS:
                return claim, lease

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        for client in (self._client, self._listener):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
