"""Posterior CTR: hand-computed values (prior 0.05 with strengths 100 / 20 / 10 unless stated)."""

from __future__ import annotations

import math

import pytest

from streamrl.rewards.ctr import CtrPrior, CtrTable, posterior_ctr

PRIOR = CtrPrior(
    prior_ctr=0.05,
    global_strength=100,
    item_strength=20,
    query_item_strength=10,
    half_life_s=3600,
    clip_eps=1e-3,
)


def test_formula_by_hand() -> None:
    # global: (10 + 100*0.05) / (100 + 100) = 15/200 = 0.075
    # item:   (4 + 20*0.075) / (10 + 20)     = 5.5/30  = 0.183333...
    # pair:   (2 + 10*0.18333) / (3 + 10)    = 3.83333/13 = 0.294871...
    got = posterior_ctr(2, 3, 4, 10, 10, 100, PRIOR)
    assert got == pytest.approx(3.8333333333 / 13, rel=1e-9)


def test_no_data_is_the_prior_and_clipping_bounds() -> None:
    assert posterior_ctr(0, 0, 0, 0, 0, 0, PRIOR) == pytest.approx(0.05)
    hot = CtrPrior(prior_ctr=0.5, global_strength=0, item_strength=0, query_item_strength=0, clip_eps=0.01)
    assert posterior_ctr(5, 5, 5, 5, 5, 5, hot) == 0.99  # 1.0 clipped into (0, 1)
    assert posterior_ctr(0, 5, 0, 5, 0, 5, hot) == 0.01


def test_table_matches_formula_and_decays() -> None:
    table = CtrTable(PRIOR)
    t0 = 1_000_000
    # request 1: "q" shows a (clicked) and b; request 2: "q2" shows a (not clicked)
    assert table.score("q", ["a"], t0) == [pytest.approx(0.05)]  # nothing counted yet: no leakage
    table.observe("q", ["a", "b"], [True, False], t0)
    table.observe("q2", ["a"], [False], t0)
    # at t0: global c=1 n=3, item a c=1 n=2, pair (q,a) c=1 n=1
    expect = posterior_ctr(1, 1, 1, 2, 1, 3, PRIOR)
    assert table.score("q", ["a"], t0)[0] == pytest.approx(expect)
    # one half-life later every count weighs 1/2
    later = table.score("q", ["a"], t0 + 3_600_000)[0]
    assert later == pytest.approx(posterior_ctr(0.5, 0.5, 0.5, 1, 0.5, 1.5, PRIOR))
    assert later < expect


def test_rebase_keeps_values() -> None:
    table = CtrTable(CtrPrior(half_life_s=1.0))
    table.observe("q", ["a"], [True], 0)
    far = 300_000  # 300 half-lives: past the rebase threshold of 2^256
    table.observe("q", ["a"], [True], far)
    value = table.score("q", ["a"], far)[0]
    assert math.isfinite(value)
    assert value == pytest.approx(posterior_ctr(1, 1, 1, 1, 1, 1, CtrPrior(half_life_s=1.0)))


def test_prune_bounds_pairs() -> None:
    table = CtrTable(PRIOR, max_entries=1000)
    for i in range(1500):
        table.observe(f"q{i}", ["a"], [False], 1000 + i)
    assert len(table) <= 1000


def test_batch_equals_score_then_observe_per_request() -> None:
    """The vectorised batch path against the per-request reference, including repeats of the same
    (query, item) inside one batch, decay between requests, and a clock that goes backwards."""
    import random

    rng = random.Random(0)
    ref, fast = CtrTable(PRIOR), CtrTable(PRIOR)
    for _batch in range(20):
        queries, flat, clicks, lens, stamps, expected = [], [], [], [], [], []
        for _ in range(rng.randrange(1, 40)):
            query = f"q{rng.randrange(4)}"
            ids = list(dict.fromkeys(f"i{rng.randrange(25)}" for _ in range(rng.randrange(1, 8))))
            clicked = [rng.random() < 0.3 for _ in ids]
            ts = 1_000_000 + rng.randrange(0, 50_000_000)
            expected += ref.score(query, ids, ts)
            ref.observe(query, ids, clicked, ts)
            queries.append(query)
            flat += ids
            clicks += clicked
            lens.append(len(ids))
            stamps.append(ts)
        got = fast.score_then_observe_batch(queries, flat, clicks, lens, stamps)
        assert got.tolist() == pytest.approx(expected, rel=1e-9)


def test_state_round_trip_restores_the_table_exactly() -> None:
    import numpy as np

    from streamrl.rewards.ctr import CtrPrior, CtrTable

    a = CtrTable(CtrPrior(half_life_s=60.0))
    rng = np.random.default_rng(0)
    for t in range(300):  # long enough in event time to rebase the reference clock
        items = [f"i{int(x)}" for x in rng.integers(0, 30, size=5)]
        a.observe(f"q{t % 7}", items, [bool(x) for x in rng.random(5) < 0.2], 1_000_000 + t * 2_000)
    b = CtrTable(CtrPrior(half_life_s=60.0))
    b.load_state(*a.state())
    probe = [f"i{n}" for n in range(35)]
    for q in ("q0", "q3", "unseen"):
        assert a.score(q, probe, 1_700_000) == b.score(q, probe, 1_700_000)
    a.observe("q1", ["i1", "i2"], [True, False], 1_700_500)
    b.observe("q1", ["i1", "i2"], [True, False], 1_700_500)
    assert a.score("q1", probe, 1_701_000) == b.score("q1", probe, 1_701_000)
