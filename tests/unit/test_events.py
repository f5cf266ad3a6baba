from __future__ import annotations

from typing import Any

from penstock.controller.events import EventPoster, event_manifest
from penstock.controller.kube import KubeError

BODY = {"metadata": {"name": "rag", "namespace": "search", "uid": "u-1"}}


def test_event_names_the_pipeline() -> None:
    event = event_manifest(BODY, "Warning", "InvalidSpec", "x" * 5000)
    assert event["involvedObject"] == {
        "apiVersion": "penstock.dev/v1alpha1",
        "kind": "Pipeline",
        "name": "rag",
        "namespace": "search",
        "uid": "u-1",
    }
    assert event["metadata"] == {"generateName": "rag.", "namespace": "search"}
    assert (event["type"], event["reason"], len(event["message"])) == (
        "Warning",
        "InvalidSpec",
        1024,
    )


def test_a_failed_post_never_fails_the_caller() -> None:
    class Failing:
        def create(self, manifest: dict[str, Any]) -> bool:
            raise KubeError(403, "forbidden")

    EventPoster(Failing())(BODY, "Normal", "Created", "created Deployment rag-embed")  # type: ignore[arg-type]
