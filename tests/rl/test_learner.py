"""A tiny-model learner step on real records: finite loss, parameters change, all algos run."""

from __future__ import annotations

import pytest
import torch

from configs.schema import LearnConfig
from rl.encoders import HashEncoder
from rl.learner import Learner
from rl.policy import PolicyShape, build_model, build_tokenizer
from rl.sid import SidCodebook


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
                    "co_score": 3.0 if clicked else 0.0,
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
