"""A tiny-model learner step on real records: finite loss, parameters change, all algos run."""

from __future__ import annotations

import pytest
import torch

from streamrl.configs.schema import LearnConfig
from streamrl.rl.encoders import HashEncoder
from streamrl.rl.learner import Learner
from streamrl.rl.policy import PolicyShape, build_model, build_tokenizer
from streamrl.rl.sid import SidCodebook


def _records() -> list[dict]:
    recs = []
    for r in range(12):
        items = []
        for p in range(4):
            item = f"i{(r + p) % 10}"
            clicked = p == r % 4
            items.append(
                {
                    "item_id": item,
                    "position": p + 1,
                    "rel_tier": 3 if clicked else 1,
                    "ctr": 0.1,
                    "clicked": clicked,
                    "ordered": clicked and r % 3 == 0,
                    "co_score": (4.0 if r % 3 == 0 else 3.0) if clicked else 0.0,
                }
            )
        recs.append(
            {
                "request_id": f"r{r}",
                "user_id": "u",
                "query": f"query {r % 3} 毛衣",
                "ts_ms": 1000 + r,
                "history": ["i1", "i2"],
                "items": items,
            }
        )
    return recs


@pytest.mark.parametrize("algo", ["tpma", "grpo", "sft"])
def test_a_step_changes_parameters_and_stays_finite(algo: str) -> None:
    ids = [f"i{n}" for n in range(10)]
    book = SidCodebook((4, 3, 3), (2, 4)).build(
        ids, HashEncoder(32).encode([f"item {n} wool" for n in range(10)]), seed=0
    )
    tok = build_tokenizer([4, 3, 3, 4, 4])
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64))
    cfg = LearnConfig(algo=algo, batch_prompts=4, group_size=4, lr=1e-2)
    learner = Learner(cfg, model, tok, book, {i: ("apparel", "knit", "sweaters") for i in ids})
    recs = _records()
    learner.observe(recs)
    before = [p.detach().clone() for p in model.parameters()]
    stats = learner.step(learner.make_batch([r for r in recs if learner.usable(r)][:4]))
    assert not stats.skipped and learner.steps == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values.values())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
    if algo != "sft":
        assert 0.0 <= stats.values["valid_sid_rate"] <= 1.0 and "reward_co_weighted" in stats.values


class _Recording:
    """A relevance source that answers tier 3 for everything and records what it was asked."""

    name = "recording"
    errors = 0

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def tiers(self, query: str, item_ids, reference) -> list[int]:  # type: ignore[no-untyped-def]
        self.calls.append((query, list(item_ids)))
        return [3] * len(item_ids)


def _tiny_learner(**kw: object) -> tuple[Learner, list[str]]:
    ids = [f"i{n}" for n in range(10)]
    book = SidCodebook((4, 3, 3), (2, 4)).build(
        ids, HashEncoder(32).encode([f"item {n} wool" for n in range(10)]), seed=0
    )
    tok = build_tokenizer([4, 3, 3, 4, 4])
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64))
    cfg = LearnConfig(batch_prompts=4, group_size=4, lr=1e-2)
    learner = Learner(cfg, model, tok, book, {i: ("apparel", "knit") for i in ids}, **kw)  # type: ignore[arg-type]
    return learner, ids


def test_components_come_from_the_record_or_the_relevance_source_once_per_request() -> None:
    source = _Recording()
    learner, _ = _tiny_learner(relevance=source)
    rec = _records()[0]  # shows i0..i3, clicks i0
    learner.observe(_records())
    sid = learner.book.sids
    fake = next(
        (a, b, c, d, e)
        for a in range(4)
        for b in range(3)
        for c in range(3)
        for d in range(4)
        for e in range(4)
        if (a, b, c, d, e) not in set(sid.values())
    )
    got = learner.components(rec, [sid["i0"], sid["i7"], sid["i1"], sid["i9"], sid["i7"], fake])
    shown0 = rec["items"][0]
    assert got[0] is not None and got[0][1] == []  # no promotions in force
    assert (got[0][0].co, got[0][0].ctr, got[0][0].rel) == (
        shown0["co_score"],
        shown0["ctr"],
        shown0["rel_tier"],
    )
    assert got[2] is not None and got[2][0].rel == rec["items"][1]["rel_tier"]  # shown: the record's tier
    for n in (1, 3, 4):  # not shown: C&O 0, the source's tier, a clipped posterior CTR
        c = got[n]
        assert c is not None and c[0].co == 0.0 and c[0].rel == 3 and 0.0 < c[0].ctr < 1.0
    assert got[5] is None  # no real item: no item reward
    assert source.calls == [(rec["query"], ["i7", "i9"])]  # one call, each outside item once


def test_a_local_pretrained_model_gets_sid_tokens_and_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from streamrl.rl.policy import load_pretrained

    tok = build_tokenizer([])  # a "pretrained" model that has never seen a SID token
    base = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64))
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model, tok2 = load_pretrained(str(tmp_path / "base"), [4, 3, 3, 4, 4])
    assert len(tok2) == len(tok) + 18
    assert model.get_input_embeddings().num_embeddings == len(tok2)
    assert tok2.convert_ids_to_tokens(tok2("<a_3><e_1>", add_special_tokens=False)["input_ids"]) == [
        "<a_3>",
        "<e_1>",
    ]
    learner, _ = _tiny_learner()
    learner = Learner(learner.cfg, model, tok2, learner.book, learner.category)
    recs = _records()
    learner.observe(recs)
    stats = learner.step(learner.make_batch([r for r in recs if learner.usable(r)][:4]))
    assert not stats.skipped and learner.steps == 1
    model.save_pretrained(tmp_path / "trained")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "trained", local_files_only=True)
    assert again.get_input_embeddings().num_embeddings == len(tok2)


def test_a_promotion_adds_its_bonus_and_is_logged_separately(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streamrl.configs.schema import RewardWeightsConfig
    from streamrl.rewards.weights import WeightsStore, default_policy

    store = WeightsStore(tmp_path, default_policy(RewardWeightsConfig(), 1.0, 3.0, 4.0))
    policy = store.apply(
        "promotions:\n"
        "  - {name: fest, match: {merchant_ids: [m7]}, bonus: {relevance: 1.0},\n"
        "     start: 1970-01-01T00:00:00Z, end: 1970-01-02T00:00:00Z}\n",
        "alice",
        "test",
    )
    ids = [f"i{n}" for n in range(10)]
    learner, _ = _tiny_learner(relevance=_Recording(), merchants={i: f"m{i[1:]}" for i in ids}, policy=policy)
    rec = _records()[0]  # ts_ms 1000: inside the window
    got = learner.components(rec, [learner.book.sids["i7"], learner.book.sids["i6"]])
    assert got[0] is not None and got[0][1] == ["fest"] and got[0][0].rel == 4  # 3 from the source + 1
    assert got[1] is not None and got[1][1] == [] and got[1][0].rel == 3
    later = dict(rec, ts_ms=86_400_000)  # the end is exclusive
    assert learner.components(later, [learner.book.sids["i7"]])[0][1] == []  # type: ignore[index]
    recs = _records()
    learner.observe(recs)
    stats = learner.step(learner.make_batch([r for r in recs if learner.usable(r)][:4]))
    v = stats.values
    assert v["weights_version"] == 1.0 and 0.0 <= v["promoted_share"] <= 1.0
    assert {"promoted_reward_rel", "promoted_reward_rel_weighted", "reward_rel_weighted"} <= set(v)
    if v["promoted_share"] > 0:
        assert v["promoted_reward_rel"] == 4.0 and v["promoted_share.fest"] == v["promoted_share"]


def test_a_step_with_non_finite_rewards_is_skipped_and_counted() -> None:
    from streamrl.rewards.item import Components

    learner, _ = _tiny_learner(relevance=_Recording())

    def poisoned(rec, sids):  # type: ignore[no-untyped-def]
        return [(Components(float("nan"), 0.1, 1.0), []) for _ in sids]

    learner.components = poisoned  # type: ignore[method-assign]
    recs = _records()
    before = [p.detach().clone() for p in learner.model.parameters()]
    stats = learner.step(learner.make_batch([r for r in recs if learner.usable(r)][:4]))
    assert stats.skipped and learner.skipped == 1 and learner.steps == 0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, learner.model.parameters(), strict=True))
