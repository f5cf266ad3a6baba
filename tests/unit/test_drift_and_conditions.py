from __future__ import annotations

from penstock.controller.conditions import merge_conditions
from penstock.controller.drift import drifted, is_subset


def test_fields_added_by_the_server_are_not_drift() -> None:
    desired = {"spec": {"ports": [{"port": 80}]}, "metadata": {"labels": {"a": "1"}}}
    live = {
        "spec": {"ports": [{"port": 80, "nodePort": 0}], "clusterIP": "10.0.0.1"},
        "metadata": {"labels": {"a": "1", "b": "2"}},
    }
    assert not drifted(desired, live)


def test_changed_or_missing_values_are_drift() -> None:
    desired = {"spec": {"image": "a"}, "metadata": {"labels": {"a": "1"}}}
    assert drifted(desired, None)
    assert drifted(desired, {"spec": {"image": "b"}, "metadata": {"labels": {"a": "1"}}})
    assert drifted(desired, {"spec": {"image": "a"}, "metadata": {"labels": {}}})


def test_canonicalized_quantities_are_equal() -> None:
    assert is_subset({"cpu": "0.5", "memory": "1024Mi"}, {"cpu": "500m", "memory": "1Gi"})
    assert not is_subset({"cpu": "1"}, {"cpu": "500m"})


def test_list_length_changes_are_drift() -> None:
    assert not is_subset({"args": ["a", "b"]}, {"args": ["a"]})
    assert not is_subset({"args": ["a"]}, {"args": ["a", "b"]})


def test_extra_owner_reference_is_not_drift() -> None:
    owner = {"uid": "1", "kind": "Pipeline"}
    desired = {"metadata": {"ownerReferences": [owner]}}
    assert not drifted(desired, {"metadata": {"ownerReferences": [{"uid": "2"}, owner]}})
    assert drifted(desired, {"metadata": {"ownerReferences": [{"uid": "2"}]}})


def test_transition_time_moves_only_on_a_flip() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0", "reason": "A"}]
    same = merge_conditions(old, [{"type": "Ready", "status": "False", "reason": "B"}], "T1")
    assert same[0]["lastTransitionTime"] == "T0"
    assert same[0]["reason"] == "B"
    flipped = merge_conditions(old, [{"type": "Ready", "status": "True", "reason": "C"}], "T2")
    assert flipped[0]["lastTransitionTime"] == "T2"
    new = merge_conditions([], [{"type": "Valid", "status": "True", "reason": "D"}], "T3")
    assert new[0]["lastTransitionTime"] == "T3"
