"""When a stored answer may be given to a similar input: the precision-first decision.

Both inputs must have an equal guard (see guards.py) and a cosine of at least ``threshold``;
when the asked text is the stored one with one slot changed (one run of content words replaced,
added or removed), the bar is ``one_slot_threshold``: a changed noun is how a different question
looks next to a stored one ("savings account" -> "checking account" scores 0.86 with MiniLM),
while a paraphrase with one synonym swapped ("simple" -> "easy") scores higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from penstock.semantic.guards import changes_one_slot
from penstock.semantic.index import Match

# What `penstock cache eval` chooses on the shipped set's tune split (docs/semantic-cache.md).
DEFAULT_THRESHOLD = 0.75
DEFAULT_ONE_SLOT_THRESHOLD = 0.9


@dataclass(frozen=True)
class Policy:
    threshold: float = DEFAULT_THRESHOLD
    one_slot_threshold: float = DEFAULT_ONE_SLOT_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1 or not 0 < self.one_slot_threshold <= 1:
            raise ValueError("thresholds are cosines in (0, 1]")

    def allows(self, stored: str, asked: str, similarity: float) -> bool:
        """Whether ``asked`` may get the answer stored for ``stored`` (their guards are equal)."""
        if stored == asked:
            return True
        bar = self.one_slot_threshold if changes_one_slot(stored, asked) else self.threshold
        return similarity >= max(bar, self.threshold)

    def choose(self, asked: str, candidates: Sequence[Match]) -> Match | None:
        """The most similar candidate the policy allows."""
        return next((m for m in candidates if self.allows(m.text, asked, m.similarity)), None)
