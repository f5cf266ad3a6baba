"""`penstock batch --plan --apply-plan NAMESPACE/NAME`: the plan's replicas as the Pipeline's
floors (`stages[].scaling.minReplicas`, which the operator renders as each HPA's minReplicas)
for the duration of the run, and the previous floors back afterwards.

Floors are only raised, never lowered, and a floor is put back only if it still holds the value
the run set (a user's edit in between wins). The patches are JSON patches that first test the
stage's name at its position, so a Pipeline whose stages changed meanwhile is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from penstock.batch.plan import Plan
from penstock.errors import PenstockError

GROUP, VERSION, PLURAL = "penstock.dev", "v1alpha1", "pipelines"
JSON_PATCH = "application/json-patch+json"


class FloorsError(PenstockError):
    """The Pipeline cannot be read or patched; status: the apiserver's (0 when none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Floor:
    position: int
    stage: str
    before: int | None
    """The stage's scaling.minReplicas before the run (None: not set, the default 1)."""
    during: int
    has_scaling: bool


def parse_target(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise FloorsError(f"--apply-plan {text!r}: expected NAMESPACE/NAME of a Pipeline")
    return namespace, name


def plan_floors(pipeline: dict[str, Any], plan: Plan) -> list[Floor]:
    """The floors to raise: the plan's replicas where they exceed the stage's minReplicas."""
    planned = {stage.name: stage.replicas for stage in plan.stages}
    floors = []
    for position, stage in enumerate(pipeline.get("spec", {}).get("stages", [])):
        name = stage.get("name")
        if name not in planned:
            continue
        scaling = stage.get("scaling")
        before = scaling.get("minReplicas") if isinstance(scaling, dict) else None
        maximum = scaling.get("maxReplicas") if isinstance(scaling, dict) else None
        wanted = planned[name]
        if isinstance(maximum, int):
            wanted = min(wanted, maximum)
        if wanted > (before if isinstance(before, int) else 1):
            floors.append(Floor(position, name, before, wanted, isinstance(scaling, dict)))
    return floors


def raise_patch(floors: list[Floor]) -> list[dict[str, Any]]:
    patch: list[dict[str, Any]] = []
    for floor in floors:
        stage = f"/spec/stages/{floor.position}"
        patch.append({"op": "test", "path": f"{stage}/name", "value": floor.stage})
        if not floor.has_scaling:
            patch.append({"op": "add", "path": f"{stage}/scaling", "value": {}})
        patch.append({"op": "add", "path": f"{stage}/scaling/minReplicas", "value": floor.during})
    return patch


def restore_patch(floor: Floor) -> list[dict[str, Any]]:
    stage = f"/spec/stages/{floor.position}"
    path = f"{stage}/scaling/minReplicas"
    patch: list[dict[str, Any]] = [
        {"op": "test", "path": f"{stage}/name", "value": floor.stage},
        {"op": "test", "path": path, "value": floor.during},
    ]
    if floor.before is None:
        patch.append({"op": "remove", "path": path})
    else:
        patch.append({"op": "replace", "path": path, "value": floor.before})
    return patch


class PipelineFloors:
    """Raise, then restore, one Pipeline's floors through the Kubernetes API (kubeconfig or
    in-cluster credentials, as kubectl would use)."""

    def __init__(self, target: str) -> None:
        self.namespace, self.name = parse_target(target)
        self.floors: list[Floor] = []
        self._api: Any = None

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            except Exception:
                try:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
                except Exception as error:
                    raise FloorsError(f"--apply-plan: no Kubernetes credentials: {error}") from None
            self._api = client.CustomObjectsApi()
        return self._api

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return getattr(self._client(), method)(
                GROUP, VERSION, self.namespace, PLURAL, self.name, *args, **kwargs
            )
        except ApiException as error:
            raise FloorsError(
                f"--apply-plan: {what} Pipeline {self.namespace}/{self.name}: "
                f"{error.status} {error.reason}",
                int(error.status or 0),
            ) from None

    def apply(self, plan: Plan) -> list[Floor]:
        pipeline = self._call("reading", "get_namespaced_custom_object")
        self.floors = plan_floors(pipeline, plan)
        if self.floors:
            self._call(
                "raising the floors of",
                "patch_namespaced_custom_object",
                raise_patch(self.floors),
                _content_type=JSON_PATCH,
            )
        return self.floors

    def restore(self) -> list[str]:
        """Put the floors back; the stages left as they were found (a user changed them).
        Any other failure is raised once every floor was tried (saying which were not)."""
        kept: list[str] = []
        failed: list[str] = []
        for floor in self.floors:
            try:
                self._call(
                    "restoring the floors of",
                    "patch_namespaced_custom_object",
                    restore_patch(floor),
                    _content_type=JSON_PATCH,
                )
            except FloorsError as error:
                # 422: a test op failed: the stage's floor or place changed since the run set it.
                (kept if error.status == 422 else failed).append(f"{floor.stage} ({error})")
        self.floors = []
        if failed:
            raise FloorsError(f"--apply-plan: floors not restored: {'; '.join(failed)}")
        return [entry.split(" (", 1)[0] for entry in kept]
