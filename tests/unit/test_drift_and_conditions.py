from __future__ import annotations

from penstock.controller.conditions import Verdict, set_conditions
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
    old = set_conditions([], [Verdict("Ready", False, "A", "")], 1, "T0")
    same = set_conditions(old, [Verdict("Ready", False, "B", "b")], 2, "T1")
    assert (same[0].last_transition_time, same[0].reason, same[0].observed_generation) == (
        "T0",
        "B",
        2,
    )
    flipped = set_conditions(same, [Verdict("Ready", True, "C", "")], 2, "T2")
    assert (flipped[0].status, flipped[0].last_transition_time) == ("True", "T2")
    unknown = set_conditions(flipped, [Verdict("Ready", None, "D", "")], 3, "T3")
    assert (unknown[0].status, unknown[0].last_transition_time) == ("Unknown", "T3")
    new = set_conditions(old, [Verdict("Valid", True, "D", "")], 1, "T4")
    assert [(c.type, c.last_transition_time) for c in new] == [("Valid", "T4")]
