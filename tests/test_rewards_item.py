"""Composite item reward and the default relevance rule, by hand."""

from __future__ import annotations

import pytest

from streamrl.rewards.item import Components, RewardWeights, category_relevance


def test_weighted_sum() -> None:
    c = Components(co=4.0, ctr=0.25, rel=3.0)
    assert c.weighted(RewardWeights()) == pytest.approx(7.25)  # released code: all ones
    assert c.weighted(RewardWeights(click_order=0.5, ctr=2.0, relevance=0.0)) == pytest.approx(2.5)


def test_category_relevance() -> None:
    refs = [("apparel", "tops", "tees"), ("home", "kitchen", "mugs")]
    assert category_relevance(("apparel", "tops", "tees"), refs) == 2
    assert category_relevance(("apparel", "shoes", "boots"), refs) == 1
    assert category_relevance(("garden", "tools", "rakes"), refs) == 0
    assert category_relevance((), refs) == 0 and category_relevance(("a",), []) == 0
