"""Which watch events on a Pipeline's children schedule a reconcile of it."""

from __future__ import annotations

from typing import Any

import pytest

from penstock.controller.handlers import needs_reconcile
from penstock.render import FIELD_MANAGER


def _meta(*entries: tuple[str, str, str | None]) -> dict[str, Any]:
    return {
        "managedFields": [
            {"manager": manager, "time": time, **({"subresource": sub} if sub else {})}
            for manager, time, sub in entries
        ]
    }


OURS = (FIELD_MANAGER, "2026-11-29T00:00:05Z", None)


@pytest.mark.parametrize("kind", ["Service", "HorizontalPodAutoscaler", "ConfigMap", "Deployment"])
def test_deletions_always_and_listings_and_creations_never(kind: str) -> None:
    assert needs_reconcile("DELETED", kind, _meta(OURS))
    assert not needs_reconcile(None, kind, _meta(OURS))
    assert not needs_reconcile("ADDED", kind, _meta(OURS))


def test_the_operators_own_apply_and_status_updates_are_ignored() -> None:
    status = ("kube-controller-manager", "2026-11-29T00:00:09Z", "status")
    assert not needs_reconcile("MODIFIED", "HorizontalPodAutoscaler", _meta(OURS, status))
    assert not needs_reconcile("MODIFIED", "Service", _meta(OURS))


def test_an_edit_by_someone_else_after_the_operator_counts() -> None:
    hand = ("kubectl-patch", "2026-11-29T00:00:07Z", None)
    older = ("kubectl-create", "2026-11-29T00:00:01Z", None)
    same_second = ("kubectl-edit", OURS[1], None)
    assert needs_reconcile("MODIFIED", "HorizontalPodAutoscaler", _meta(OURS, hand))
    assert not needs_reconcile("MODIFIED", "Service", _meta(OURS, older))
    assert needs_reconcile("MODIFIED", "ConfigMap", _meta(OURS, same_second))


def test_every_deployment_change_counts_its_status_makes_the_pipeline_ready() -> None:
    assert needs_reconcile("MODIFIED", "Deployment", _meta(OURS))


def test_writes_refused_in_a_terminating_namespace_are_recognised() -> None:
    from penstock.controller.handlers import _namespace_terminating
    from penstock.controller.kube import KubeError

    refused = "unable to create new content in namespace x because it is being terminated"
    assert _namespace_terminating(KubeError(403, refused))
    assert not _namespace_terminating(KubeError(403, "forbidden: RBAC"))
    assert not _namespace_terminating(KubeError(500, refused))
