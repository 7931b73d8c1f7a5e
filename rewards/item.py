"""The composite item reward (paper Eq.10): R_item = w_co·R_C&O + w_ctr·R_CTR + w_rel·R_Rel.

The released code's form is the all-ones case. Components come from the reward record for an item
the request impressed, and otherwise from: C&O 0; CTR from the learner's posterior table (the same
formula as the join, rewards/ctr.py); relevance from a pluggable source (`category_relevance` by
default). A rollout that is no real item earns no item reward (`None`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RewardWeights:
    click_order: float = 1.0
    ctr: float = 1.0
    relevance: float = 1.0


@dataclass(frozen=True)
class Components:
    co: float
    ctr: float
    rel: float

    def weighted(self, w: RewardWeights) -> float:
        return w.click_order * self.co + w.ctr * self.ctr + w.relevance * self.rel


def category_relevance(item_category: Sequence[str], reference: Sequence[Sequence[str]]) -> int:
    """Default relevance of an item the request did not show: 2 if it shares a leaf category with
    one of the request's reference items (clicked, ordered or tier >= 2), 1 if only a top category,
    else 0. Tier 3 is kept for judged items."""
    best = 0
    for ref in reference:
        if ref and tuple(item_category) == tuple(ref):
            return 2
        if ref and item_category and item_category[0] == ref[0]:
            best = 1
    return best
