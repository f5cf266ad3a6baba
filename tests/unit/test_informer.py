"""The informer: a store of watched objects, and a reflector that lists, watches, resumes and
relists after 410 Gone, against a small apiserver stand-in over real HTTP."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from penstock.controller.handlers import informer_events
from penstock.controller.informer import (
    CachedKube,
    Reflector,
    Source,
    Store,
    parse_selector,
    sources,
)
from penstock.controller.leadership import Leadership, is_leader
from penstock.controller.queue import WorkQueue

LABEL = "penstock.dev/pipeline"


def service(name: str, version: int, pipeline: str = "p", namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(version),
            "labels": {LABEL: pipeline, "app.kubernetes.io/managed-by": "penstock-operator"},
            "ownerReferences": [{"kind": "Pipeline", "name": pipeline, "uid": "u"}],
            "managedFields": [{"manager": "penstock", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"ports": [{"port": 80}]},
    }


def test_the_store_keeps_the_newest_version_without_managed_fields() -> None:
    store = Store()
    assert store.upsert("Service", service("a", 5))
    assert not store.upsert("Service", service("a", 4)), "an older event must not win"
    kept = store.get("Service", "ns", "a")
    assert kept is not None
    assert kept["metadata"]["resourceVersion"] == "5"
    assert "managedFields" not in kept["metadata"]
    assert kept["kind"] == "Service"


def test_the_store_finds_a_pipelines_children_by_label_and_namespace() -> None:
    store = Store()
    for name, pipeline, namespace in [("a", "p", "ns"), ("b", "q", "ns"), ("c", "p", "other")]:
        store.upsert("Service", service(name, 1, pipeline, namespace))
    found = store.list("Service", "ns", f"{LABEL}=p,app.kubernetes.io/managed-by=penstock-operator")
    assert [obj["metadata"]["name"] for obj in found] == ["a"]
    assert {o["metadata"]["name"] for o in store.list("Service", None)} == {"a", "b", "c"}
    store.remove("Service", "ns", "a")
    assert store.list("Service", "ns", f"{LABEL}=p") == []
    # A relabelled object moves in the index.
    moved = service("b", 2, "p", "ns")
    store.upsert("Service", moved)
    assert [o["metadata"]["name"] for o in store.list("Service", "ns", f"{LABEL}=p")] == ["b"]
    assert store.list("Service", "ns", f"{LABEL}=q") == []


def test_a_list_replaces_what_its_source_covers_only() -> None:
    store = Store()
    everywhere = Source("Service", "/api/v1/services")
    store.expect(everywhere)
    store.replace(everywhere, [service("a", 1), service("b", 1, namespace="other")])
    assert store.synced("Service")
    one = Source("Service", "/api/v1/namespaces/ns/services", namespace="ns")
    assert store.replace(one, []) == [("ns", "a")]
    assert store.get("Service", "other", "b") is not None


def test_an_event_older_than_the_operators_own_write_changes_nothing() -> None:
    store = Store()
    store.upsert("Service", service("a", 5))
    # The operator deletes a: a MODIFIED event of before the delete must not bring it back.
    store.remove("Service", "ns", "a")
    assert not store.upsert("Service", service("a", 5))
    assert store.get("Service", "ns", "a") is None
    # The watch's DELETED event confirms it; a re-created a (newer) is kept.
    store.remove("Service", "ns", "a", 6)
    assert store.upsert("Service", service("a", 9))
    # A late DELETED of the old one does not remove the new one.
    store.remove("Service", "ns", "a", 6)
    assert store.get("Service", "ns", "a") is not None


def test_a_list_keeps_what_was_written_through_after_it() -> None:
    store = Store()
    source = Source("Service", "/api/v1/services")
    store.expect(source)
    store.upsert("Service", service("new", 30))  # applied after the list's version 20
    store.upsert("Service", service("a", 25))
    gone = store.replace(source, [service("a", 12)], version=20)
    assert gone == []
    kept = store.get("Service", "ns", "a")
    assert kept is not None and kept["metadata"]["resourceVersion"] == "25"
    assert store.get("Service", "ns", "new") is not None
    # What the list does not hold and is older than it is gone.
    store.upsert("Service", service("old", 3))
    assert store.replace(source, [service("a", 25), service("new", 30)], version=40) == [
        ("ns", "old")
    ]


def test_only_equality_selectors_are_answered_from_the_store() -> None:
    assert parse_selector("a=b, c=d") == {"a": "b", "c": "d"}
    for selector in ("a!=b", "a==b", "a", "a in (b)"):
        with pytest.raises(ValueError, match="only name=value"):
            parse_selector(selector)


def test_sources_cover_every_namespace_or_each_watched_one() -> None:
    assert [s.path for s in sources(["Service"], [], {})] == ["/api/v1/services"]
    watched = sources(["Deployment"], ["a", "b"], {"Deployment": "x=y"})
    assert [s.path for s in watched] == [
        "/apis/apps/v1/namespaces/a/deployments",
        "/apis/apps/v1/namespaces/b/deployments",
    ]
    assert {s.selector for s in watched} == {"x=y"}


class FakeApiserver:
    """Lists and watches of Services, scripted: each list answers the next of ``lists``
    (objects, version; the last one stays); each watch answers the next script step (events,
    then the end of the watch; a number: that error status)."""

    def __init__(self) -> None:
        self.lists: list[tuple[list[dict[str, Any]], int]] = []
        self.watches: list[list[dict[str, Any]] | int] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.hold = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                fake.requests.append((url.path, query))
                if "watch" not in query:
                    objects, version = fake.lists[0] if fake.lists else ([], 1)
                    if len(fake.lists) > 1:
                        fake.lists.pop(0)
                    body = {
                        "kind": "ServiceList",
                        "metadata": {"resourceVersion": str(version)},
                        "items": objects,
                    }
                    self._answer(200, json.dumps(body).encode())
                    return
                step = fake.watches.pop(0) if fake.watches else None
                if isinstance(step, int):
                    self._answer(step, json.dumps({"code": step}).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in step or []:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                if step is None:
                    fake.hold.wait(10)  # no script left: a quiet watch, until the test ends
                self.wfile.write(b"0\r\n\r\n")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    fake = FakeApiserver()
    yield fake
    fake.close()


def api_client(url: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def wait(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_reflector_lists_watches_resumes_and_relists_after_gone(
    apiserver: FakeApiserver,
) -> None:
    apiserver.lists = [
        ([service("a", 5), service("b", 6)], 10),
        # While no watch ran, b was deleted and c changed: the relist must show both.
        ([service("a", 11), service("c", 20)], 20),
    ]
    apiserver.watches = [
        # The first watch: a is modified, c is added, then the server ends the watch.
        [
            {"type": "MODIFIED", "object": service("a", 11)},
            {"type": "ADDED", "object": service("c", 12)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
        ],
        # Resumed from the bookmark's version, which is gone by now.
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}],
    ]
    events: list[tuple[str, str, str]] = []
    store = Store()
    source = Source("Service", "/api/v1/services", "app.kubernetes.io/managed-by=x")
    reflector = Reflector(
        api_client(apiserver.url),
        source,
        store,
        lambda kind, kind_of_event, obj: events.append(
            (kind_of_event, obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
        ),
    )
    reflector.start()
    wait(lambda: ("DELETED", "b", "6") in events)
    wait(lambda: ("MODIFIED", "c", "20") in events)
    reflector.stop()

    assert events[:2] == [("LISTED", "a", "5"), ("LISTED", "b", "6")]
    assert ("MODIFIED", "a", "11") in events
    assert events[2] == ("MODIFIED", "a", "11"), "the watch's events follow the list"
    # a did not change in the gap: the relist does not announce it again.
    assert events.count(("MODIFIED", "a", "11")) == 1
    assert store.get("Service", "ns", "b") is None
    assert reflector.relists >= 1
    watches = [query for path, query in apiserver.requests if "watch" in query]
    assert watches[0]["resourceVersion"] == ["10"], "the watch starts at the list's version"
    assert watches[1]["resourceVersion"] == ["13"], "a resumed watch starts at the last seen"
    assert all(
        q["labelSelector"] == ["app.kubernetes.io/managed-by=x"] for _, q in apiserver.requests
    )
    assert watches[0]["allowWatchBookmarks"] == ["true"]


def test_a_failing_apiserver_is_retried_with_backoff(apiserver: FakeApiserver) -> None:
    apiserver.lists = [([service("a", 5)], 10)]
    apiserver.watches = [500, 500]
    store = Store()
    reflector = Reflector(api_client(apiserver.url), Source("Service", "/api/v1/services"), store)
    reflector.start()
    wait(lambda: reflector.relists >= 2)
    assert store.get("Service", "ns", "a") is not None, "what was listed stays served"
    reflector.stop()


def test_cached_reads_come_from_the_store_once_synced(apiserver: FakeApiserver) -> None:
    apiserver.lists = [([service("a", 5)], 10)]
    store = Store()
    source = Source("Service", "/api/v1/services")
    kube = CachedKube(api_client(apiserver.url), store)
    store.expect(source)
    # Not synced yet: the apiserver answers.
    assert [o["metadata"]["name"] for o in kube.list("Service", "ns", "")] == ["a"]
    asked = len(apiserver.requests)
    store.replace(source, [service("a", 5), service("b", 7)])
    assert {o["metadata"]["name"] for o in kube.list("Service", "ns", f"{LABEL}=p")} == {"a", "b"}
    assert kube.get("Service", "ns", "b") is not None
    assert kube.get("Service", "ns", "nothing") is None
    assert len(apiserver.requests) == asked, "a synced kind reads no apiserver"


def peering(**peers: tuple[int, float, int]) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "metadata": {"name": "penstock"},
        "status": {
            peer: {
                "priority": priority,
                "lastseen": (now - datetime.timedelta(seconds=ago)).isoformat(),
                "lifetime": lifetime,
            }
            for peer, (priority, ago, lifetime) in peers.items()
        },
    }


def test_leadership_follows_kopfs_rule() -> None:
    now = datetime.datetime.now(datetime.UTC)
    assert is_leader([peering(me=(10, 0, 10))], "me", 10, now)
    assert is_leader([peering(me=(10, 0, 10), low=(5, 0, 10))], "me", 10, now)
    assert not is_leader([peering(me=(5, 0, 10), high=(10, 1, 10))], "me", 5, now)
    assert not is_leader([peering(me=(5, 0, 10), twin=(5, 1, 10))], "me", 5, now)
    # A peer not heard of for longer than its lifetime is dead.
    assert is_leader([peering(me=(5, 0, 10), high=(10, 11, 10))], "me", 5, now)
    # As in kopf: no lastseen is alive; lifetime 0 is dead; unreadable entries are skipped.
    assert not is_leader([{"status": {"high": {"priority": 10}}}], "me", 5, now)
    assert is_leader([peering(high=(10, 1, 0))], "me", 5, now)
    assert is_leader([{"status": {"odd": {"priority": "x"}, "gone": "text"}}], "me", 5, now)


async def test_a_standby_queues_but_works_only_once_active(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    source = Source("ClusterKopfPeering", "/apis/kopf.dev/v1/clusterkopfpeerings")
    store.expect(source)
    store.replace(source, [{**peering(me=(5, 0, 10), high=(10, 0, 10)), "kind": "x"}])
    woken: list[bool] = []
    leadership = Leadership(
        store, "ClusterKopfPeering", "penstock", "me", 5, lambda: woken.append(True)
    )
    done: list[tuple[str, str]] = []

    async def work(key: tuple[str, str], _: Any) -> None:
        done.append(key)

    queue = WorkQueue(work, gate=leadership.active)
    queue.start()
    on_change = informer_events(asyncio.get_running_loop(), queue, leadership)
    with caplog.at_level(logging.INFO, "penstock.leadership"):
        assert not leadership.check()
    assert "standing by" in caplog.text, "the first decision is told either way"
    # A child deleted by hand: its Pipeline is queued, but a standby does not work.
    await asyncio.to_thread(on_change, "Service", "DELETED", service("a", 3))
    await asyncio.to_thread(on_change, "Service", "LISTED", service("b", 3, pipeline="q"))
    await asyncio.sleep(0.8)
    assert done == []
    # The active peer's keep-alive expires: this one takes over and works what was queued.
    store.replace(source, [{**peering(me=(5, 0, 10), high=(10, 11, 10)), "kind": "x"}])
    await asyncio.to_thread(on_change, "ClusterKopfPeering", "MODIFIED", {})
    await asyncio.sleep(0.1)
    assert leadership.active.is_set() and woken == [True]
    for _ in range(50):
        if done:
            break
        await asyncio.sleep(0.02)
    assert done == [("ns", "p")], "only the deletion needs a reconcile, not the initial listing"
    await queue.stop()
