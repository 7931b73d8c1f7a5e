"""Reward weights and promotions: validation, versioned store, watcher, promotion windows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamrl.configs.schema import RewardWeightsConfig
from streamrl.rewards.item import Components
from streamrl.rewards.weights import (
    ItemInfo,
    RewardPolicy,
    WeightsError,
    WeightsStore,
    WeightsWatcher,
    default_policy,
)

GOOD = """
weights: {click_order: 1.0, ctr: 0.5, relevance: 2.0}
w_item: 0.5
v_click: 3.0
v_order: 5.0
promotions:
  - name: emerging-merchants-festival
    match: {merchant_ids: [m1, m2]}
    bonus: {relevance: 1.0}
    start: 2026-03-18T00:00:00Z
    end: 2026-03-21T00:00:00Z
  - name: knitwear
    match: {category_prefix: [apparel, knit]}
    bonus: {ctr: 0.25}
    start: 2026-03-20T00:00:00Z
    end: 2026-03-22T00:00:00Z
"""
MAR_19 = 1_773_878_400_000  # 2026-03-19T00:00:00Z
MAR_20_12H = 1_774_008_000_000  # 2026-03-20T12:00:00Z
MAR_21 = 1_774_051_200_000  # 2026-03-21T00:00:00Z, the first promotion's end (exclusive)


def store(tmp_path: Path) -> WeightsStore:
    return WeightsStore(tmp_path / "weights", default_policy(RewardWeightsConfig(), 1.0, 3.0, 4.0))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("w_item: 0.5", "w_item: 0.5\nbogus: 1"), "bogus"),
        (("ctr: 0.5", "ctr: -0.5"), "weights.ctr"),
        (("ctr: 0.5", "ctr: .nan"), "weights.ctr"),
        (("relevance: 2.0", "relevance: .inf"), "weights.relevance"),
        (("end: 2026-03-21T00:00:00Z", "end: 2026-03-17T00:00:00Z"), "not after start"),
        (("{merchant_ids: [m1, m2]}", "{}"), "match is empty"),
        (("start: 2026-03-18T00:00:00Z", "start: 2026-03-18T00:00:00"), "timezone"),
        (("name: knitwear", "name: emerging-merchants-festival"), "unique"),
        (("bonus: {ctr: 0.25}", "bonus: {ctr: 0.25, clicks: 1}"), "clicks"),
    ],
)
def test_a_bad_file_is_refused_with_the_field_named_and_nothing_changes(
    tmp_path: Path, edit: tuple[str, str], field: str
) -> None:
    s = store(tmp_path)
    s.apply(GOOD, "alice", "festival")
    bad = GOOD.replace(*edit)
    assert bad != GOOD
    with pytest.raises(WeightsError, match=field):
        s.apply(bad, "bob", "typo", "bad.yaml")
    assert s.current_version() == 1 and len(s.versions()) == 1 and len(s.history()) == 1
    assert s.load().weights.relevance == 2.0


def test_not_yaml_and_not_a_mapping_are_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    for text in ("weights: [", "- 1\n- 2"):
        with pytest.raises(WeightsError):
            s.apply(text, "a", "b")
    assert s.current_version() == 0 and s.load().version == 0


def test_versions_grow_and_revert_stores_a_new_version(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.load().version == 0 and s.load().w_item == 1.0  # the config's defaults
    s.apply(GOOD, "alice", "festival")
    s.apply(GOOD.replace("w_item: 0.5", "w_item: 2.0"), "bob", "more item reward")
    assert s.load().w_item == 2.0
    p = s.revert(1, "carol", "CTR dropped")
    assert p.version == 3 and s.current_version() == 3 and s.load().w_item == 0.5
    hist = s.history()
    assert [(h["action"], h["version"], h["author"]) for h in hist] == [
        ("apply", 1, "alice"),
        ("apply", 2, "bob"),
        ("revert", 3, "carol"),
    ]
    assert hist[2]["reason"] == "CTR dropped" and hist[0]["applied_at"]
    with pytest.raises(WeightsError, match="does not exist"):
        s.revert(9, "carol", "x")


def test_watcher_switches_and_keeps_the_old_version_when_the_new_one_is_corrupt(tmp_path: Path) -> None:
    s = store(tmp_path)
    w = WeightsWatcher(s, logging.getLogger("t"), every_s=0.0)
    assert w.poll().version == 0
    s.apply(GOOD, "alice", "festival")
    assert w.poll().version == 1
    s.apply(GOOD.replace("w_item: 0.5", "w_item: 2.0"), "bob", "more")
    (tmp_path / "weights" / "versions" / "000002.json").write_text("{not json")
    assert w.poll().version == 1  # refused; version 1 stays in force
    assert w.poll().w_item == 0.5


def test_promotions_apply_inside_their_window_to_matching_items_only(tmp_path: Path) -> None:
    p = store(tmp_path).apply(GOOD, "alice", "festival")
    base = Components(3.0, 0.1, 2.0)
    knit, shoes = ("apparel", "knit", "sweaters"), ("apparel", "shoes")
    got, names = p.promote(base, "i1", ItemInfo("m1", shoes), MAR_19)
    assert names == ["emerging-merchants-festival"] and got == Components(3.0, 0.1, 3.0)
    got, names = p.promote(base, "i1", ItemInfo("m1", knit), MAR_20_12H)  # both active, both match
    assert sorted(names) == ["emerging-merchants-festival", "knitwear"] and got == Components(3.0, 0.35, 3.0)
    got, names = p.promote(base, "i1", ItemInfo("m1", shoes), MAR_21)  # end is exclusive
    assert names == [] and got == base
    got, names = p.promote(base, "i9", ItemInfo("m9", shoes), MAR_19)  # another merchant
    assert names == [] and got == base
    assert p.promote(base, "i1", None, MAR_19) == (base, [])  # unknown item: no merchant to match


def test_policy_co_score_uses_the_file_values() -> None:
    p = RewardPolicy(default_policy(RewardWeightsConfig(), 1.0, 3.0, 5.0).content)
    assert (p.co(True, False), p.co(True, True), p.co(False, False)) == (3.0, 5.0, 0.0)


def test_the_shipped_rewards_file_is_valid(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "rewards.yaml"
    p = store(tmp_path).apply(path.read_text(), "ci", "shipped file", str(path))
    assert p.version == 1 and p.content.promotions == []
