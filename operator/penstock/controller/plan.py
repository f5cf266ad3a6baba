"""The pure middle of a reconcile: what is observed in, what to write out.

``plan_children`` compares the rendered children with the live ones the Pipeline owns and says
which to apply (created or drifted) and which to delete (no longer rendered). No I/O: the
reconcile observes (lists), plans here, then applies the plan in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from penstock.controller.drift import drifted

ChildKey = tuple[str, str]
"""(kind, name) of a child object."""


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    return manifest["kind"], manifest["metadata"]["name"]


@dataclass(frozen=True)
class Deletion:
    kind: str
    name: str
    uid: str | None
    """The live object's uid: the delete is a precondition on it (never someone else's)."""


@dataclass(frozen=True)
class ChildPlan:
    apply: tuple[dict[str, Any], ...]
    """What server-side apply writes, in rendered order: missing or drifted children."""
    new: frozenset[ChildKey]
    """Those of ``apply`` that do not exist yet (created, for the Events)."""
    delete: tuple[Deletion, ...]
    """Live children the Pipeline owns that are no longer rendered."""

    @property
    def empty(self) -> bool:
        return not (self.apply or self.delete)

    def summary(self) -> dict[str, list[str]]:
        """``{"create": ["Kind/name", ...], "update": [...], "delete": [...]}``."""
        keys = [child_key(manifest) for manifest in self.apply]
        return {
            "create": [f"{k}/{n}" for k, n in keys if (k, n) in self.new],
            "update": [f"{k}/{n}" for k, n in keys if (k, n) not in self.new],
            "delete": [f"{d.kind}/{d.name}" for d in self.delete],
        }


def plan_children(
    desired: Sequence[dict[str, Any]], live: Mapping[ChildKey, dict[str, Any]]
) -> ChildPlan:
    """Create what is rendered and missing, update what drifted, delete what is not rendered."""
    apply = tuple(m for m in desired if drifted(m, live.get(child_key(m))))
    new = frozenset(child_key(m) for m in apply if child_key(m) not in live)
    wanted = {child_key(manifest) for manifest in desired}
    delete = tuple(
        Deletion(kind, name, item["metadata"].get("uid"))
        for (kind, name), item in live.items()
        if (kind, name) not in wanted
    )
    return ChildPlan(apply, new, delete)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Does the object name the Pipeline of this uid among its owners?"""
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", []))


def plan_secret(
    used: bool, existing: Mapping[str, Any] | None, uid: str
) -> Literal["create", "delete"] | None:
    """The cache password Secret: created once when a stage caches (never re-applied: the
    password is not rotated by accident), deleted when none does and it is the Pipeline's."""
    if used and existing is None:
        return "create"
    if not used and existing is not None and owned_by(existing, uid):
        return "delete"
    return None
