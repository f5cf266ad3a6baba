"""Which of a pair of operators works: kopf's peering rule, for the operator's own loops.

kopf pauses its watches while a live peer has a higher (or the same) priority, but the resync
loop, the work queues and the informer's events are the operator's own: they wait on
``Leadership.active``. It applies kopf's rule to the peering objects in the informer's store
(keep-alives in their status: identity -> priority, lastseen, lifetime), so both decide alike:
active when no other live peer has a priority at least ours. A killed peer's keep-alive
expires after its lifetime; then the standby turns active and queues every Pipeline.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from penstock.controller.informer import Store

log = logging.getLogger("penstock.leadership")

CHECK_SECONDS = 1.0


def own_identity() -> str:
    """kopf's peer identity: $POD_ID (the chart sets the pod's name); when unset, one is set
    here, before kopf starts, so that kopf and this module name this process alike."""
    identity = os.environ.get("POD_ID")
    if not identity:
        identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        os.environ["POD_ID"] = identity
    return identity


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def is_leader(
    peerings: Iterable[Mapping[str, Any]],
    identity: str,
    priority: int,
    now: datetime.datetime,
) -> bool:
    """No other peer alive in any peering object has a priority >= ours (kopf's Peer: no
    lastseen is now, lifetime 60 unless given, dead once lastseen + lifetime has passed)."""
    for peering in peerings:
        for peer, info in (peering.get("status") or {}).items():
            if peer == identity or not isinstance(info, Mapping):
                continue
            try:
                seen = _parse_time(str(info["lastseen"])) if "lastseen" in info else now
                lifetime = float(info.get("lifetime", 60))
                peer_priority = int(info.get("priority", 0))
            except (TypeError, ValueError):
                continue  # kopf could not read it either
            if seen is None or seen + datetime.timedelta(seconds=lifetime) <= now:
                continue  # dead: its keep-alive expired
            if peer_priority >= priority:
                return False
    return True


class Leadership:
    """``active`` is set while this operator works; standalone it always is."""

    def __init__(
        self,
        store: Store | None,
        kind: str,
        name: str,
        identity: str,
        priority: int,
        on_active: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.name = name
        self.identity = identity
        self.priority = priority
        self.on_active = on_active
        self.active = asyncio.Event()
        self._decided = False
        self._missing_told = False
        if store is None:
            self.active.set()

    def check(self, now: datetime.datetime | None = None) -> bool:
        assert self.store is not None
        if not self.store.synced(self.kind):
            return False
        peerings = [obj for obj in self.store.list(self.kind, None) if _named(obj, self.name)]
        if not peerings and not self._missing_told:
            log.warning("no %s named %s: standing by (kopf pauses too)", self.kind, self.name)
            self._missing_told = True
        moment = now or datetime.datetime.now(datetime.UTC)
        leader = bool(peerings) and is_leader(peerings, self.identity, self.priority, moment)
        if leader != self.active.is_set() or not self._decided:
            self._decided = True
            if leader:
                log.info("active: no live peer with a priority >= %d", self.priority)
                self.active.set()
                self.on_active()
            else:
                log.info("standing by: a live peer has a priority >= %d", self.priority)
                self.active.clear()
        return leader

    async def run(self) -> None:
        if self.store is None:
            return
        while True:
            try:
                self.check()
            except Exception:  # a bad peering object must not stop the checks for good
                log.exception("checking the peering")
            await asyncio.sleep(CHECK_SECONDS)


def _named(obj: Mapping[str, Any], name: str) -> bool:
    return bool(obj.get("metadata", {}).get("name") == name)
