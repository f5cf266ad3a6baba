"""The semantic index's snapshot (penstock/semantic/index.py): what the disk tier keeps of it
across restarts, checksummed, the most recent inputs first to survive a smaller bound."""

from __future__ import annotations

import pytest

from penstock.semantic.index import CorruptSnapshot, SemanticIndex


def test_a_snapshot_restores_inputs_vectors_and_recency() -> None:
    index = SemanticIndex(10)
    for number in range(5):
        index.add("g", f"k{number}", f"text {number}", [1.0, float(number), 0.5])
    index.touch("g", "k0")  # now the most recent
    restored = SemanticIndex.restore(index.snapshot(), max_entries=3)
    # The three most recent survive a smaller bound: k3, k4 and k0.
    assert len(restored) == 3
    found = restored.candidates("g", [1.0, 0.0, 0.5], threshold=0.0, limit=10)
    assert {match.key for match in found} == {"k0", "k3", "k4"}
    assert next(m for m in found if m.key == "k0").similarity == pytest.approx(1.0, abs=1e-6)
    assert SemanticIndex.restore(SemanticIndex(5).snapshot(), 5).candidates("g", [1.0], 0) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_snapshot_is_refused(damage: str) -> None:
    index = SemanticIndex(10)
    index.add("g", "k", "text", [1.0, 2.0])
    data = bytearray(index.snapshot())
    if damage == "flip":
        data[-2] ^= 0x10
    elif damage == "truncate":
        del data[-4:]
    else:
        data = bytearray()
    with pytest.raises(CorruptSnapshot):
        SemanticIndex.restore(bytes(data), 10)
