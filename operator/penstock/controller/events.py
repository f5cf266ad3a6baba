"""Kubernetes Events about Pipelines, posted directly through the API client.

Posted from worker threads (reconciles run in threads), so they must not depend on kopf's
per-handler context; a failure to post is logged and never fails a reconcile.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from penstock.api import API_VERSION, KIND
from penstock.controller.conditions import now_rfc3339
from penstock.controller.kube import Kube, KubeError

log = logging.getLogger("penstock.events")
COMPONENT = "penstock-operator"


def event_manifest(
    body: Mapping[str, Any], type_: str, reason: str, message: str
) -> dict[str, Any]:
    meta = body["metadata"]
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": body.get("kind") or KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventPoster:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.create(event_manifest(body, type_, reason, message))
        except KubeError as error:
            log.warning("cannot post Event %s for %s: %s", reason, body["metadata"]["name"], error)
