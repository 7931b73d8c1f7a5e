"""The push gate's paired HR@10 test (checkpoints/push.py, issue #11): exact McNemar on the per-request
hits of the candidate and the served version over the same held-out requests. Pure units: evaluation
is a fake returning synthetic hits; the store and serving layout are real folders in tmp_path."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from streamrl.checkpoints.push import (
    Gate,
    HeldoutScores,
    discordant_pairs,
    mcnemar_exact_p,
    paired_difference_ci95,
    push,
    significant_regression,
)
from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import CheckpointStore

CANDIDATE = "0000000002"  # the store's folder of step 2; the served version's folder is "1"


def _fill(folder: Path) -> None:
    save_file({"w": torch.ones(2, 2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")


def _served_and_candidate(tmp_path: Path) -> tuple[CheckpointStore, ServingRoot]:
    """Step 1 pushed as version 1 (no gate), step 2 written: the candidate."""
    store = CheckpointStore(tmp_path / "run")
    store.write(1, _fill, {})
    serving = ServingRoot(tmp_path / "serving", "m")
    assert push(store, serving).version == 1
    store.write(2, _fill, {})
    return store, serving


def _scores(hits: list[int], share: float = 1.0) -> HeldoutScores:
    """What rl/gate.py::heldout_evaluator returns for these per-request hits."""
    return {
        "hr@10": sum(hits) / max(len(hits), 1),
        "distinct_top1_share": share,
        "n": float(len(hits)),
        "queries": float(len(hits)),
        "hits": hits,
    }


def _evaluator(candidate: HeldoutScores, served: HeldoutScores) -> Any:
    return lambda folder: candidate if folder.name == CANDIDATE else served


def _pairs(both: int, cand_only: int, served_only: int, neither: int) -> tuple[list[int], list[int]]:
    """Hit lists of the candidate and the served version with these paired counts."""
    cand = [1] * both + [1] * cand_only + [0] * served_only + [0] * neither
    served = [1] * both + [0] * cand_only + [1] * served_only + [0] * neither
    return cand, served


# -- the test statistic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 10, 2 * 0.5**10),  # 0.001953125: every discordant request favours the served version
        (10, 0, 2 * 0.5**10),  # two-sided: symmetric
        (1, 9, 2 * (1 + 10) / 1024),  # 2·(C(10,0) + C(10,1)) / 2^10 = 0.021484375
        (3, 7, 2 * (1 + 10 + 45 + 120) / 1024),  # 2·176/1024 = 0.34375
        (5, 5, 1.0),  # b = c: 2·P(X ≤ 5) > 1, capped
        (40, 40, 1.0),
        (0, 0, 1.0),  # no discordant request: no evidence either way
    ],
)
def test_mcnemar_exact_p_against_hand_computed_values(b: int, c: int, p: float) -> None:
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_p_is_a_probability_for_many_discordant_pairs() -> None:
    # 2000 discordant requests: 2^2000 overflows a float, the integer sum does not
    assert 0.0 <= mcnemar_exact_p(900, 1100) < 1e-5
    assert mcnemar_exact_p(1000, 1000) == 1.0


def test_discordant_pairs_and_the_paired_interval() -> None:
    cand, served = _pairs(both=50, cand_only=10, served_only=30, neither=110)
    assert discordant_pairs(cand, served) == (10, 30)
    # d = (10 − 30)/200 = −0.1; se = sqrt(40 − 20²/200)/200 = sqrt(38)/200 = 0.0308221
    # 95 %: −0.1 ± 1.959964 × 0.0308221 = −0.1 ± 0.0604102
    lo, hi = paired_difference_ci95(10, 30, 200)
    assert lo == pytest.approx(-0.1604102, abs=1e-6) and hi == pytest.approx(-0.0395898, abs=1e-6)


def test_an_equally_good_candidate_is_rarely_refused() -> None:
    """The noise the old rule mistook for regressions: candidate and served hits independent
    Bernoulli(0.3) on 200 requests. The old rule (drop > 0.02) refuses about a third of them; this one
    at most alpha/2 (the exact test is conservative: fewer)."""
    rng = random.Random(0)
    gate = Gate(None, max_regression=0.02, min_distinct_top1=0.0, alpha=0.05, min_heldout=100)
    old = new = 0
    trials = 1000
    for _ in range(trials):
        cand = [int(rng.random() < 0.3) for _ in range(200)]
        served = [int(rng.random() < 0.3) for _ in range(200)]
        b, c = discordant_pairs(cand, served)
        old += (c - b) / 200 > 0.02
        new += significant_regression(b, c, 200, mcnemar_exact_p(b, c), gate)
    assert old / trials > 0.25  # the failure this replaces is real in this setting
    assert new / trials <= 0.025


def test_a_significant_drop_smaller_than_max_regression_is_not_refused() -> None:
    gate = Gate(None, max_regression=0.02, min_distinct_top1=0.0)
    # n = 5000: 50 more served-only hits is a drop of 0.01, p = 2·P(X ≤ 100 | m=250) ≈ 0.0019 < alpha
    assert mcnemar_exact_p(100, 150) < 0.05
    assert not significant_regression(100, 150, 5000, mcnemar_exact_p(100, 150), gate)
    # a drop of exactly max_regression counts: 20/1000 is 0.02 (one division), p = 2·0.5^20
    assert significant_regression(0, 20, 1000, mcnemar_exact_p(0, 20), gate)
    # a better candidate is never refused, however significant
    assert not significant_regression(20, 0, 1000, mcnemar_exact_p(20, 0), gate)


# -- the gate, through push() ----------------------------------------------------------------------


def test_a_noisy_but_equally_good_candidate_is_pushed(tmp_path: Path) -> None:
    store, serving = _served_and_candidate(tmp_path)
    rng = random.Random(14)  # seed picked so the candidate happens to score 0.03 lower
    served = [int(rng.random() < 0.3) for _ in range(200)]
    cand = [int(rng.random() < 0.3) for _ in range(200)]
    assert (sum(served), sum(cand)) == (65, 59)  # HR@10 0.325 vs 0.295: the old rule refused this
    r = push(store, serving, evaluate=_evaluator(_scores(cand), _scores(served)), max_regression=0.02)
    assert r.pushed and r.version == 2, r.reason
    m = r.metrics
    assert (m["n"], m["hr@10"], m["served_hr@10"]) == (200, 0.295, 0.325)
    assert m["hr@10_diff"] == pytest.approx(-0.03) and m["test"] == "mcnemar_exact"
    assert m["discordant"] == {"candidate_only": 40, "served_only": 46}
    # p = 2·P(X ≤ 40 | m=86) ≈ 0.59: six requests' difference among 86 discordant ones is noise
    assert m["p_value"] == pytest.approx(mcnemar_exact_p(40, 46)) and m["p_value"] > 0.5
    assert m["hr@10_diff_ci95_lo"] < -0.03 < m["hr@10_diff_ci95_hi"] and m["hr@10_diff_ci95_hi"] > 0
    # the version's push record carries the gate's statistics, never the per-request hits
    pushed = serving.history()[-1]
    assert pushed["action"] == "push" and pushed["version"] == 2
    assert (pushed["metrics"]["n"], pushed["metrics"]["p_value"]) == (200, m["p_value"])
    meta = json.dumps(serving.history()) + (serving.version_path(2) / "manifest.json").read_text()
    assert '"hits"' not in meta


def test_a_real_regression_is_refused_and_recorded(tmp_path: Path) -> None:
    store, serving = _served_and_candidate(tmp_path)
    # n=300: served hits 60+60 = 120 (0.40), candidate 60+15 = 75 (0.25); b=15, c=60
    cand, served = _pairs(both=60, cand_only=15, served_only=60, neither=165)
    r = push(store, serving, evaluate=_evaluator(_scores(cand), _scores(served)), max_regression=0.02)
    assert not r.pushed and r.outcome == "refused"
    assert "0.2500" in r.reason and "0.4000" in r.reason and "300 paired" in r.reason
    assert serving.versions() == [1]  # nothing copied
    entry = serving.history()[-1]
    assert entry["action"] == "refused_push" and entry["step"] == 2
    m = entry["metrics"]
    assert (m["n"], m["hr@10"], m["served_hr@10"], m["served_version"]) == (300, 0.25, 0.40, 1)
    assert m["hr@10_diff"] == pytest.approx(-0.15)
    assert m["discordant"] == {"candidate_only": 15, "served_only": 60}
    # p = 2·P(X ≤ 15 | m=75): 15 of 75 discordant requests favour the candidate where 37.5 would under
    # equal HR@10; p ≈ 1.6e-7
    assert m["p_value"] == pytest.approx(mcnemar_exact_p(15, 60)) and m["p_value"] < 1e-6
    assert m["test"] == "mcnemar_exact" and m["alpha"] == 0.05 and "hits" not in m


def test_below_min_heldout_hr_is_not_compared(tmp_path: Path) -> None:
    store, serving = _served_and_candidate(tmp_path)
    cand, served = _pairs(both=5, cand_only=0, served_only=30, neither=15)  # 50 requests, 0.10 vs 0.70
    evaluate = _evaluator(_scores(cand), _scores(served))
    r = push(store, serving, evaluate=evaluate, min_heldout=100)
    assert r.pushed, r.reason
    assert r.metrics["n"] == 50 and "p_value" not in r.metrics
    assert "under push.min_heldout 100" in r.metrics["gate_note"] and "not compared" in r.metrics["gate_note"]
    # the same 50 requests with min_heldout lowered: compared and refused (b=0, c=30: p = 2·0.5^30).
    # Version 2 (step 2, just pushed) is now served with the good hits; step 3 is the candidate.
    store.write(3, _fill, {})
    r = push(store, serving, evaluate=lambda f: _scores(served if f.name == "2" else cand), min_heldout=50)
    assert not r.pushed and r.metrics["p_value"] == pytest.approx(2 * 0.5**30)


def test_the_collapse_check_still_runs_below_min_heldout(tmp_path: Path) -> None:
    store, serving = _served_and_candidate(tmp_path)
    cand, served = _pairs(both=10, cand_only=10, served_only=0, neither=30)  # better, but collapsed
    evaluate = _evaluator(_scores(cand, share=0.02), _scores(served))
    r = push(store, serving, evaluate=evaluate, min_distinct_top1=0.05, min_heldout=100)
    assert not r.pushed and "collapsed" in r.reason and serving.versions() == [1]


def test_unpaired_hits_are_refused(tmp_path: Path) -> None:
    store, serving = _served_and_candidate(tmp_path)
    r = push(store, serving, evaluate=_evaluator(_scores([1] * 150), _scores([1] * 140)))
    assert not r.pushed and "not paired" in r.reason and "150" in r.reason and "140" in r.reason


def test_every_decision_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, serving = _served_and_candidate(tmp_path)
    cand, served = _pairs(both=30, cand_only=20, served_only=22, neither=128)
    with caplog.at_level("INFO", logger="streamrl.push"):
        assert push(store, serving, evaluate=_evaluator(_scores(cand), _scores(served))).pushed
    line = caplog.records[-1].getMessage()
    assert "as version 2" in line and "200 paired" in line and "mcnemar_exact p=" in line


# -- the per-request hits the evaluator returns --------------------------------------------------


def test_evaluate_returns_one_hit_per_engaged_record_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """rl/evaluate.py with the decoder faked: records without a click or order are not evaluated;
    `hits` follows the evaluated records' order and its mean is HR@K."""
    from streamrl.rl import evaluate as ev

    book = type("Book", (), {"sids": {"a": (0, 0), "b": (0, 1), "c": (1, 0)}})()
    top = {"q1": [(0, 0)], "q2": [(0, 1)], "q3": [(1, 0)], "q4": [(0, 0), (1, 0)]}

    def beams(model: Any, tok: Any, prompts: list[str], vocab: Any, width: int) -> list[Any]:
        return [[(sid, 0.0) for sid in top[p]] for p in prompts]

    monkeypatch.setattr(ev, "format_prompt", lambda query, history, tok: query)
    monkeypatch.setattr(ev, "beam_search", beams)

    def rec(query: str, clicked: str, ordered: str = "") -> dict[str, Any]:
        items = [{"item_id": i, "clicked": i == clicked, "ordered": i == ordered} for i in "abc"]
        return {"query": query, "history": [], "items": items}

    records = [
        rec("q1", "a"),  # hit
        rec("q2", ""),  # no click, no order: not evaluated
        rec("q3", "a"),  # miss
        rec("q4", "", ordered="c"),  # hit at rank 2
    ]
    model = type("Model", (), {"eval": lambda self: self})()
    result = ev.evaluate(model, None, book, None, records, k=10, beam=4, free_samples=0, batch=2)  # type: ignore[arg-type]
    assert result["hits"] == [1, 0, 1] and result["n"] == 3
    assert result["hr@10"] == pytest.approx(sum(result["hits"]) / 3)
    assert math.isclose(result["hr@10"], 2 / 3)
