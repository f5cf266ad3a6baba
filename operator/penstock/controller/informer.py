"""An informer: the objects of a few kinds as the apiserver's watches last delivered them, so
a reconcile observes from memory instead of listing every child kind per Pipeline.

Like client-go's reflector and store: one thread per source (a kind, in every namespace or in
one) lists, then watches from the list's resourceVersion with bookmarks. A watch that ends is
resumed from the last version seen; ``410 Gone`` (that version was compacted away) or any other
failure relists after a backoff, and a list replaces the source's objects, so a deletion missed
while no watch ran is seen too. Every change reaches ``on_change`` (from the source's thread).

``CachedKube`` answers a Kube's reads of the watched kinds from the store once their first list
is in, and writes its own writes through, so the next reconcile sees them before their events.
Objects are kept as compact JSON without ``managedFields`` (a tenth of a parsed dict's memory);
a read parses only what it returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from penstock.controller.kube import KINDS, Kube, KubeError

log = logging.getLogger("penstock.informer")

ObjectKey = tuple[str, str]
"""(namespace, name); a cluster-scoped object has namespace ""."""
OnChange = Callable[[str, str, Mapping[str, Any]], None]
"""(kind, event type: LISTED, ADDED, MODIFIED or DELETED, the object as delivered)."""

WATCH_SECONDS = 240  # the server ends a watch after this (plus jitter); it is then resumed
READ_SLACK_SECONDS = 30  # a watch silent this long past its end is a dead connection
MIN_BACKOFF, MAX_BACKOFF = 0.5, 30.0


@dataclass(frozen=True)
class Source:
    kind: str
    path: str
    """The collection: /api/v1/services, /api/v1/namespaces/<ns>/services, ..."""
    selector: str = ""
    namespace: str | None = None
    """The one namespace it covers; None: every namespace (or a cluster-scoped kind)."""


def sources(
    kinds: Sequence[str], namespaces: Sequence[str], selectors: Mapping[str, str]
) -> list[Source]:
    """A source per kind, per watched namespace (none given: one across all)."""
    result: list[Source] = []
    for kind in kinds:
        spec = KINDS[kind]
        selector = selectors.get(kind, "")
        if not namespaces:
            result.append(Source(kind, f"/{spec.prefix}/{spec.plural}", selector))
        result += [Source(kind, spec.path(ns), selector, ns) for ns in namespaces]
    return result


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _compact(obj: Mapping[str, Any]) -> bytes:
    meta = dict(obj["metadata"])
    meta.pop("managedFields", None)
    return json.dumps({**obj, "metadata": meta}, separators=(",", ":")).encode()


def parse_selector(selector: str) -> dict[str, str]:
    """The equality selectors the operator uses ("a=b,c=d"); anything else is refused."""
    wanted: dict[str, str] = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        name, sep, value = term.partition("=")
        if not sep or name.endswith("!") or value.startswith("="):
            raise ValueError(f"selector {selector!r}: only name=value terms are cached")
        wanted[name] = value
    return wanted


@dataclass
class _Entry:
    version: int | None
    data: bytes
    labels: dict[str, str]


class Store:
    """The objects of each kind, kept per (namespace, name) with their resourceVersion and
    labels, indexed by (namespace, value of ``index_label``), so a Pipeline's children are
    found without a scan of every child.

    Thread-safe: the sources' threads write, the reconcile threads read.
    """

    def __init__(self, index_label: str = "penstock.dev/pipeline") -> None:
        self.index_label = index_label
        self._lock = threading.Lock()
        self._objects: dict[str, dict[ObjectKey, _Entry]] = {}
        # Children the operator deleted, at the version it last saw: an older event still on
        # its way must not bring one back. Cleared by the watch's DELETED event or a list.
        self._deleted: dict[str, dict[ObjectKey, int]] = {}
        self._index: dict[str, dict[tuple[str, str], set[ObjectKey]]] = {}
        self._synced: dict[str, set[Source]] = {}
        self._pending: dict[str, set[Source]] = {}

    def expect(self, source: Source) -> None:
        with self._lock:
            self._pending.setdefault(source.kind, set()).add(source)
            self._objects.setdefault(source.kind, {})

    def watches(self, kind: str) -> bool:
        return kind in self._pending

    def synced(self, kind: str) -> bool:
        with self._lock:
            return kind in self._pending and self._synced.get(kind) == self._pending[kind]

    def source_synced(self, source: Source) -> bool:
        with self._lock:
            return source in self._synced.get(source.kind, set())

    def _put(self, kind: str, key: ObjectKey, obj: Mapping[str, Any]) -> None:
        self._drop(kind, key)
        labels = dict(obj["metadata"].get("labels") or {})
        self._objects.setdefault(kind, {})[key] = _Entry(_version(obj), _compact(obj), labels)
        if self.index_label in labels:
            index = self._index.setdefault(kind, {})
            index.setdefault((key[0], labels[self.index_label]), set()).add(key)

    def _drop(self, kind: str, key: ObjectKey) -> None:
        entry = self._objects.get(kind, {}).pop(key, None)
        if entry is not None and self.index_label in entry.labels:
            slot = (key[0], entry.labels[self.index_label])
            keys = self._index.get(kind, {}).get(slot)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[kind][slot]

    def _newer_kept(self, kind: str, key: ObjectKey, version: int | None) -> bool:
        """Does the store hold (or has the operator deleted) a version after this one?"""
        if version is None:
            return False
        old = self._objects.get(kind, {}).get(key)
        if old is not None and old.version is not None and version < old.version:
            return True
        deleted = self._deleted.get(kind, {}).get(key)
        return deleted is not None and version <= deleted

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Keep obj unless a newer version is kept; True when it was kept."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            if self._newer_kept(kind, key, _version(obj)):
                return False
            self._deleted.get(kind, {}).pop(key, None)
            self._put(kind, key, obj)
        return True

    def remove(self, kind: str, namespace: str, name: str, version: int | None = None) -> None:
        """A watch's deletion (at the object's last version), or the operator's own delete
        (no version): then older events of it are ignored until the watch confirms it."""
        key = (namespace, name)
        with self._lock:
            entry = self._objects.get(kind, {}).get(key)
            if version is not None:
                self._deleted.get(kind, {}).pop(key, None)
                if entry is not None and entry.version is not None and entry.version > version:
                    return  # a newer object of that name (re-created) stays
            elif entry is not None and entry.version is not None:
                self._deleted.setdefault(kind, {})[key] = entry.version
            self._drop(kind, key)

    def replace(
        self, source: Source, listed: Sequence[Mapping[str, Any]], version: int | None = None
    ) -> list[ObjectKey]:
        """A list's objects (at the list's version) replace the source's, except what was
        written through after the list; returns the keys that are gone."""
        fresh = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in listed}
        with self._lock:
            objects = self._objects.setdefault(source.kind, {})
            gone = [
                key
                for key, entry in objects.items()
                if (source.namespace is None or key[0] == source.namespace)
                and key not in fresh
                and not (version is not None and entry.version and entry.version > version)
            ]
            for key in gone:
                self._drop(source.kind, key)
            deleted = self._deleted.setdefault(source.kind, {})
            for key in [k for k in deleted if k not in fresh]:
                del deleted[key]  # the list agrees: gone
            for key, obj in fresh.items():
                if not self._newer_kept(source.kind, key, _version(obj)):
                    self._put(source.kind, key, obj)
            self._synced.setdefault(source.kind, set()).add(source)
        return gone

    def entries(self, source: Source) -> dict[ObjectKey, tuple[int | None, bytes]]:
        """What the store holds of a source: key -> (resourceVersion, compact JSON)."""
        with self._lock:
            return {
                key: (entry.version, entry.data)
                for key, entry in self._objects.get(source.kind, {}).items()
                if source.namespace is None or key[0] == source.namespace
            }

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._objects.get(kind, {}).get((namespace, name))
        return _loads(kind, entry.data) if entry else None

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        """Objects of a kind (in a namespace, None: all) whose labels match the selector."""
        wanted = parse_selector(selector)
        with self._lock:
            objects = self._objects.get(kind, {})
            keys: Iterable[ObjectKey]
            if namespace is not None and self.index_label in wanted:
                slot = (namespace, wanted[self.index_label])
                keys = list(self._index.get(kind, {}).get(slot, ()))
            else:
                keys = [k for k in objects if namespace is None or k[0] == namespace]
            found = [
                entry.data
                for key in keys
                if (entry := objects.get(key)) is not None
                and all(entry.labels.get(name) == value for name, value in wanted.items())
            ]
        return [_loads(kind, data) for data in found]


def _loads(kind: str, data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(data)
    obj.setdefault("kind", kind)
    return obj


class Reflector:
    """List, then watch, one source into the store, until stopped."""

    def __init__(
        self,
        api: client.ApiClient,
        source: Source,
        store: Store,
        on_change: OnChange = lambda kind, event_type, obj: None,
    ) -> None:
        self.api = api
        self.source = source
        self.store = store
        self.on_change = on_change
        self.relists = 0
        self._stopped = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{source.kind}", daemon=True
        )

    def start(self) -> None:
        self.store.expect(self.source)
        self._thread.start()

    def interrupt(self) -> None:
        self._stopped.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # closed already: the thread ends anyway
                response.shutdown()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)  # a daemon: one still in a list dies with the process

    def stop(self) -> None:
        self.interrupt()
        self.join(1.0)

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        version: str | None = None
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list()
                    backoff = MIN_BACKOFF
                if self._stopped.is_set():
                    return
                version = self._watch(version)
            except Gone:
                log.info("%s: watch version gone; relisting", self.source.path)
                version = None
                self.relists += 1
            except Exception as error:
                if self._stopped.is_set():
                    return
                log.warning(
                    "%s: %s; relisting in %.1fs", self.source.path, error or type(error), backoff
                )
                version = None
                self.relists += 1
                self._stopped.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _request(self, query: list[tuple[str, str]], read_timeout: float) -> Any:
        if self.source.selector:
            query = [*query, ("labelSelector", self.source.selector)]
        serialized = self.api.param_serialize(
            method="GET",
            resource_path=self.source.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*serialized, _request_timeout=(10.0, read_timeout))
        except client.ApiException as error:
            if error.status == 410:
                raise Gone from error
            raise KubeError(error.status or 0, f"GET {self.source.path}: {error.reason}") from error
        if not 200 <= response.status < 300:
            # The whole (short) error body, so that the connection can be reused.
            response.read()  # type: ignore[no-untyped-call]
            response.response.release_conn()
            if response.status == 410:
                raise Gone
            raise KubeError(response.status, f"GET {self.source.path}: {response.status}")
        return response

    def _list(self) -> str:
        response = self._request([], 60.0)
        response.read()
        result = json.loads(response.data)
        items: list[dict[str, Any]] = result.get("items", [])
        for item in items:
            item.setdefault("kind", self.source.kind)
        kind = self.source.kind
        first = not self.store.source_synced(self.source)
        known = self.store.entries(self.source)
        version: str = result.get("metadata", {}).get("resourceVersion", "")
        gone = self.store.replace(self.source, items, int(version) if version.isdigit() else None)
        # A relist after a gap announces what changed meanwhile, as the watch would have.
        for key in gone:
            self.on_change(kind, "DELETED", _loads(kind, known[key][1]))
        for obj in items:
            meta = obj["metadata"]
            was = known.get((meta.get("namespace", ""), meta["name"]))
            if first:
                self.on_change(kind, "LISTED", obj)
            elif was is None or was[0] != _version(obj):
                self.on_change(kind, "ADDED" if was is None else "MODIFIED", obj)
        return version

    def _watch(self, version: str) -> str:
        """Watch from version until the server ends the watch; returns the last version."""
        seconds = WATCH_SECONDS + random.randint(0, 30)
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(seconds)),
        ]
        response = self._request(query, seconds + READ_SLACK_SECONDS).response  # urllib3's
        self._response = response
        complete = False
        try:
            if self._stopped.is_set():  # stopped before the response could be shut down
                return version
            for line in _lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise KubeError(int(obj.get("code") or 0), str(obj.get("message")))
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                obj.setdefault("kind", self.source.kind)
                meta = obj["metadata"]
                if kind == "DELETED":
                    self.store.remove(
                        self.source.kind, meta.get("namespace", ""), meta["name"], _version(obj)
                    )
                else:
                    self.store.upsert(self.source.kind, obj)
                self.on_change(self.source.kind, str(kind), obj)
            complete = True
        finally:
            self._response = None
            if complete:
                response.release_conn()
            else:  # half read: the connection must not go back to the pool
                response.close()
        return version


class Gone(Exception):
    """The watched resourceVersion is no longer served: relist."""


def _lines(response: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class Informer:
    """The reflectors of every source over one store."""

    def __init__(self, api: client.ApiClient, store: Store, watched: Sequence[Source]) -> None:
        self.store = store
        self.reflectors = [Reflector(api, source, store) for source in watched]

    def start(self, on_change: OnChange) -> None:
        for reflector in self.reflectors:
            reflector.on_change = on_change
            reflector.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop every reflector, waiting at most ``wait`` seconds in all (daemon threads)."""
        for reflector in self.reflectors:
            reflector.interrupt()
        deadline = time.monotonic() + wait
        for reflector in self.reflectors:
            reflector.join(max(0.0, deadline - time.monotonic()))


class CachedKube(Kube):
    """A Kube whose reads of the store's kinds come from the store once it has them."""

    def __init__(self, api: client.ApiClient, store: Store, timeout_seconds: float = 30.0):
        super().__init__(api, timeout_seconds)
        self.store = store

    def _cached(self, kind: str) -> bool:
        return self.store.watches(kind) and self.store.synced(kind)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self._cached(kind):
            return self.store.get(kind, namespace, name)
        return super().get(kind, namespace, name)

    def list_all(self, kind: str) -> list[dict[str, Any]]:
        if self._cached(kind):
            return self.store.list(kind, None)
        return super().list_all(kind)

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        if self._cached(kind):
            return self.store.list(kind, namespace, selector)
        return super().list(kind, namespace, selector)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        result = super().apply(manifest)
        self._keep(result)
        return result

    def json_patch(
        self, kind: str, namespace: str, name: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        result = super().json_patch(kind, namespace, name, operations)
        self._keep(result)
        return result

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        result = super().patch_status(kind, namespace, name, status)
        self._keep(result)
        return result

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        super().delete(kind, namespace, name, uid)
        if self.store.watches(kind):
            self.store.remove(kind, namespace, name)

    def _keep(self, result: Any) -> None:
        if isinstance(result, dict) and self.store.watches(str(result.get("kind", ""))):
            self.store.upsert(str(result["kind"]), result)
