"""A small synchronous Kubernetes client over the official client's ApiClient.

Generic over the few kinds Penstock manages; every call has a timeout. Called from kopf's
async handlers through asyncio.to_thread, never directly on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from penstock.api import GROUP, PLURAL, VERSION
from penstock.api.run import RUN_PLURAL
from penstock.render import FIELD_MANAGER


@dataclass(frozen=True)
class Kind:
    prefix: str  # "api/v1" or "apis/<group>/<version>"
    plural: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"/{self.prefix}/namespaces/{quote(namespace)}/{self.plural}"
        if name is not None:
            path += f"/{quote(name)}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("api/v1", "configmaps"),
    "PersistentVolumeClaim": Kind("api/v1", "persistentvolumeclaims"),
    "Secret": Kind("api/v1", "secrets"),
    "Service": Kind("api/v1", "services"),
    "Deployment": Kind("apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": Kind("apis/autoscaling/v2", "horizontalpodautoscalers"),
    "Pipeline": Kind(f"apis/{GROUP}/{VERSION}", PLURAL),
    "PipelineRun": Kind(f"apis/{GROUP}/{VERSION}", RUN_PLURAL),
    # A PipelineRun's shards.
    "Job": Kind("apis/batch/v1", "jobs"),
    "Event": Kind("api/v1", "events"),
    # Read only (list), to report why a stage's pods do not start.
    "Pod": Kind("api/v1", "pods"),
    # Read only (watched): kopf's peering keep-alives, for the operator's own loops.
    "ClusterKopfPeering": Kind("apis/kopf.dev/v1", "clusterkopfpeerings"),
    "KopfPeering": Kind("apis/kopf.dev/v1", "kopfpeerings"),
}
# Children the operator applies and prunes, in apply order (config before workloads).
CHILD_KINDS = (
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
)


class KubeError(Exception):
    """A failed API call; status is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _items(kind: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = result.get("items", [])
    for item in items:  # list items omit kind; put it back for uniform handling
        item.setdefault("kind", kind)
    return items


def load_api_client(connections: int = 4) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig; up to
    ``connections`` pooled connections (one per concurrent caller)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api: client.ApiClient, timeout_seconds: float = 30.0) -> None:
        self._api = api
        self._timeout = (5.0, timeout_seconds)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type
            # The client encodes JSON content types itself; apply-patch+yaml goes as text
            # (JSON is YAML).
            payload = body if content_type.endswith("json") else json.dumps(body)
        serialized = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=payload,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=self._timeout)
            response.read()  # type: ignore[no-untyped-call]
        except client.ApiException as error:
            raise KubeError(error.status or 0, f"{method} {path}: {error.reason}") from error
        except Exception as error:  # urllib3 errors: connection refused, timeout
            raise KubeError(0, f"{method} {path}: {error}") from error
        data = response.data or b""
        if not 200 <= response.status < 300:
            try:
                message = json.loads(data).get("message", "")
            except ValueError:
                message = data[:200].decode(errors="replace")
            raise KubeError(response.status, f"{method} {path}: {response.status} {message}")
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", KINDS[kind].path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return result

    def list_all(self, kind: str) -> list[dict[str, Any]]:
        """Objects of a kind in every namespace."""
        spec = KINDS[kind]
        return _items(kind, self._call("GET", f"/{spec.prefix}/{spec.plural}"))

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        return _items(kind, self._call("GET", KINDS[kind].path(namespace), query=query))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with Penstock's field manager, taking over conflicting fields."""
        meta = manifest["metadata"]
        path = KINDS[manifest["kind"]].path(meta["namespace"], meta["name"])
        result: dict[str, Any] = self._call(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        return result

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create unless it exists; True when created."""
        meta = manifest["metadata"]
        try:
            self._call(
                "POST",
                KINDS[manifest["kind"]].path(meta["namespace"]),
                query=[("fieldManager", FIELD_MANAGER)],
                body=manifest,
            )
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), body=body)
        except KubeError as error:
            if error.status not in (404, 409):
                raise

    def json_patch(
        self, kind: str, namespace: str, name: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """RFC 6902 operations, applied as one write (a failed ``test`` fails them all: 422)."""
        result: dict[str, Any] = self._call(
            "PATCH",
            KINDS[kind].path(namespace, name),
            body=[dict(operation) for operation in operations],
            content_type="application/json-patch+json",
        )
        return result

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH",
            KINDS[kind].path(namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return result
