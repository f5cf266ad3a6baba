"""The reconcile's pure plan (controller/plan.py): rendered children and live ones in, what to
create, update and delete out; golden-tested like render."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from penstock.api.validation import validate_document
from penstock.controller.plan import ChildKey, child_key, plan_children, plan_secret
from penstock.render import PipelineRef, RenderSettings, render_children

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UID = "00000000-0000-4000-8000-000000000001"


def rendered(floors: dict[str, int] | None = None) -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples" / "rag.yaml").read_text())
    spec = validate_document(doc).spec
    assert spec is not None
    ref = PipelineRef("rag", "demo", UID)
    return render_children(ref, spec, RenderSettings(operator_image="penstock:test"), floors)


def as_live(manifests: list[dict[str, Any]]) -> dict[ChildKey, dict[str, Any]]:
    """What the apiserver holds after applying them: the same fields plus its own."""
    live = {}
    for number, manifest in enumerate(manifests):
        item = copy.deepcopy(manifest)
        item["metadata"]["uid"] = f"uid-{number}"
        item["metadata"]["resourceVersion"] = str(100 + number)
        item["status"] = {"observedGeneration": 1}
        live[child_key(item)] = item
    return live


def scenarios() -> dict[str, dict[str, list[str]]]:
    desired = rendered()
    live = as_live(desired)
    drifted = copy.deepcopy(live)
    deployment = drifted[("Deployment", "rag-embed")]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "edited/by-hand:1"
    stale = copy.deepcopy(drifted[("Service", "rag-embed")])
    stale["metadata"]["name"] = "rag-old-stage"
    drifted[("Service", "rag-old-stage")] = stale
    del drifted[("HorizontalPodAutoscaler", "rag-generate")]
    return {
        "first reconcile (nothing live)": plan_children(desired, {}).summary(),
        "idle (everything as rendered)": plan_children(desired, live).summary(),
        "an edit, a gone stage, a deleted HPA": plan_children(desired, drifted).summary(),
        "the tuner raises a floor": plan_children(rendered({"embed": 3}), live).summary(),
    }


def test_plan_matches_golden_file() -> None:
    text = yaml.safe_dump(scenarios(), sort_keys=False)
    golden = GOLDEN / "plan-rag.yaml"
    if os.environ.get("PENSTOCK_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run with PENSTOCK_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{golden.name} differs: review, then PENSTOCK_UPDATE_GOLDEN=1"
    )


def test_an_idle_pipeline_plans_no_write() -> None:
    desired = rendered()
    assert plan_children(desired, as_live(desired)).empty


def test_a_deletion_names_the_live_uid() -> None:
    desired = rendered()
    live = as_live(desired)
    extra = copy.deepcopy(live[("Service", "rag-embed")])
    extra["metadata"].update(name="rag-gone", uid="uid-gone")
    live[("Service", "rag-gone")] = extra
    plan = plan_children(desired, live)
    assert [(d.kind, d.name, d.uid) for d in plan.delete] == [("Service", "rag-gone", "uid-gone")]
    assert plan.apply == ()


def test_the_cache_secret_is_created_once_and_deleted_only_when_ours() -> None:
    ours = {"metadata": {"ownerReferences": [{"uid": UID}]}}
    theirs = {"metadata": {"ownerReferences": [{"uid": "someone-else"}]}}
    assert plan_secret(True, None, UID) == "create"
    assert plan_secret(True, ours, UID) is None  # never re-applied: no rotation by accident
    assert plan_secret(False, ours, UID) == "delete"
    assert plan_secret(False, theirs, UID) is None
    assert plan_secret(False, None, UID) is None
