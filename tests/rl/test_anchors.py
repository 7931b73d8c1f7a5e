"""Issue #10: what keeps RL from collapsing — the SFT term on every algo, the KL reference (beta
changes the gradient; nothing to anchor to is refused), init-from (a foreign codebook is refused),
unknown-tier relevance, position weights for any L, and the per-step collapse statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamrl.checkpoints.store import CheckpointStore
from streamrl.configs.schema import LearnConfig
from streamrl.rl.checkpointing import InitError, new_learner, save
from streamrl.rl.encoders import HashEncoder
from streamrl.rl.learner import Learner
from streamrl.rl.policy import PolicyShape, build_model, build_tokenizer
from streamrl.rl.sid import CatalogItem, SidCodebook, save_codebook

from .test_learner import _Recording, _records

TINY = {"batch_prompts": 4, "group_size": 4, "lr": 1e-2}
SHAPE = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}


def _book(
    levels: tuple[int, ...] = (4, 3, 3), unique: tuple[int, int] = (2, 4), seed: int = 0
) -> SidCodebook:
    ids = [f"i{n}" for n in range(10)]
    texts = [f"item {n} wool" for n in range(10)]
    if seed:  # another catalog text per item: the same items get other SIDs
        texts = [f"{t} {['cotton', 'silk', 'linen'][n % 3]} {n * seed}" for n, t in enumerate(texts)]
    return SidCodebook(levels, unique).build(ids, HashEncoder(32).encode(texts), seed=0)


def _learner(book: SidCodebook | None = None, **cfg: object) -> Learner:
    book = book or _book()
    sizes = [*book.levels, *([book.unique[1]] * book.unique[0])]
    tok = build_tokenizer(sizes)
    model = build_model(tok, PolicyShape(**SHAPE), seed=0)  # type: ignore[arg-type]
    learn = LearnConfig(**{**TINY, **cfg})  # type: ignore[arg-type]
    return Learner(
        learn, model, tok, book, {i: ("apparel", "knit") for i in book.sids}, relevance=_Recording()
    )


def _batch(learner: Learner):  # type: ignore[no-untyped-def]
    recs = _records()
    learner.observe(recs)
    return learner.make_batch([r for r in recs if learner.usable(r)][:4])


def _grads(learner: Learner, seed: int = 5) -> list[torch.Tensor]:
    """The gradient of one step's loss, with the rollout sampler reseeded (same rollouts)."""
    learner.gen.manual_seed(seed)
    assert not learner.accumulate(_batch(learner)).skipped  # zeroes, then back-propagates the loss
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in learner.model.parameters()
    ]


@pytest.mark.parametrize("algo", ["tpma", "grpo"])
def test_the_sft_term_is_a_per_token_mean_on_both_rl_algos(algo: str) -> None:
    learner = _learner(algo=algo, sft_weight=0.5)
    learner.gen.manual_seed(1)
    stats = learner.accumulate(_batch(learner)).values
    # loss = pg (+ kl, 0 here) + 0.5 * sft_nll: the SFT term is in the total for tpma and grpo alike
    assert stats["loss"] == pytest.approx(stats["pg_loss"] + 0.5 * stats["sft_nll"], abs=1e-5)
    # per-token mean: the NLL of one SID token, so at most log(K) of the widest level per token
    # for a near-uniform untrained model (levels 4,3,3,4,4: mean log K ≈ 1.25), not 5 tokens' sum
    assert 0.5 < stats["sft_nll"] < 2.0
    off = _learner(algo=algo, sft_weight=0.0)
    off.gen.manual_seed(1)
    stats0 = off.accumulate(_batch(off)).values
    assert "sft_nll" not in stats0


@pytest.mark.parametrize("algo", ["tpma", "grpo"])
def test_beta_changes_the_gradient_once_the_policy_moves_off_its_reference(algo: str) -> None:
    a = _learner(algo=algo, beta=0.0, sft_weight=0.0)
    b = _learner(algo=algo, beta=1.0, sft_weight=0.0)
    for ln in (a, b):
        ln.anchor()
        with torch.no_grad():  # move the policy off the reference the same way in both
            for n, p in enumerate(ln.model.parameters()):
                p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=torch.float32) + n).reshape(p.shape))
    ga, gb = _grads(a), _grads(b)
    diff = sum(float((x - y).abs().sum()) for x, y in zip(ga, gb, strict=True))
    assert diff > 1e-4  # the KL term adds its own gradient
    b.gen.manual_seed(5)
    stats = b.accumulate(_batch(b)).values
    assert stats["kl"] > 0.0 and stats["loss"] == pytest.approx(stats["pg_loss"] + stats["kl"], abs=1e-5)
    # at the reference itself the k3 estimate is 0 for every sample
    c = _learner(algo=algo, beta=1.0, sft_weight=0.0)
    c.anchor()
    c.gen.manual_seed(5)
    stats_c = c.accumulate(_batch(c)).values
    assert stats_c["kl"] == pytest.approx(0.0, abs=1e-6)


def _sids_dir(tmp: Path, book: SidCodebook, name: str) -> Path:
    catalog = {i: CatalogItem(i, f"title {i}", ("apparel", "knit"), "m1", {}) for i in book.sids}
    save_codebook(book, catalog, tmp / name, "hash-32")
    return tmp / name


def test_beta_with_nothing_to_anchor_to_is_refused(tmp_path: Path) -> None:
    sids = _sids_dir(tmp_path, _book(), "sids")
    cfg = LearnConfig(**TINY, beta=0.1, model=SHAPE)  # type: ignore[arg-type]
    with pytest.raises(InitError, match=r"learn\.beta=0\.1 needs a model to anchor to"):
        new_learner(cfg, sids, 0)
    assert new_learner(cfg, sids, 0, anchor_later=True).ref is None  # the warm start anchors later
    sft = LearnConfig(**TINY, algo="sft", beta=0.1, model=SHAPE)  # type: ignore[arg-type]
    assert new_learner(sft, sids, 0).ref is None  # SFT has no KL term to anchor


def test_init_from_starts_from_the_checkpoint_and_refuses_a_foreign_codebook(tmp_path: Path) -> None:
    sids = _sids_dir(tmp_path, _book(), "sids")
    cfg = LearnConfig(**TINY, algo="sft", model=SHAPE)  # type: ignore[arg-type]
    sft = new_learner(cfg, sids, 0)
    sft.codebook_dir = sids
    recs = _records()
    sft.observe(recs)
    for _ in range(3):
        sft.step(sft.make_batch([r for r in recs if sft.usable(r)][:4]))
    ckpt = save(CheckpointStore(tmp_path / "sft"), sft)
    rl_cfg = LearnConfig(**TINY, beta=0.1, model=SHAPE)  # type: ignore[arg-type]
    rl = new_learner(rl_cfg, sids, 1, init_from=ckpt)
    assert rl.steps == 0 and rl.ref is not None  # fresh counters; the SFT model is the reference
    for a, b, r in zip(sft.model.parameters(), rl.model.parameters(), rl.ref.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach()) and torch.equal(a.detach(), r.detach())
    foreign = _book(seed=7)
    assert foreign.sids != _book().sids
    other = _sids_dir(tmp_path, foreign, "other-sids")
    with pytest.raises(InitError) as err:
        new_learner(rl_cfg, other, 1, init_from=ckpt)
    assert str(ckpt) in str(err.value) and str(other) in str(err.value) and "codebook" in str(err.value)


def test_a_shown_item_with_unknown_tier_gets_the_relevance_sources_tier() -> None:
    learner = _learner()
    rec = _records()[0]
    rec["items"][1]["rel_tier"] = -1  # shown, tier unknown
    sid = learner.book.sids
    got = learner.components(rec, [sid[rec["items"][1]["item_id"]], sid[rec["items"][2]["item_id"]]])
    assert got[0] is not None and got[0][0].rel == 3  # the source's answer, not 0
    assert got[0][0].ctr == rec["items"][1]["ctr"]  # the rest still from the record
    assert got[1] is not None and got[1][0].rel == rec["items"][2]["rel_tier"]
    assert learner.relevance.calls == [(rec["query"], [rec["items"][1]["item_id"]])]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("levels", "unique", "weights"),
    [
        ((10,), (1, 4), (2.0, 0.0)),  # L = 2: the first code, then the item's own code
        ((4, 3, 3), (1, 4), (2.0, 2.0, 1.0, 0.0)),
        ((4, 3, 3), (2, 4), (2.0, 2.0, 1.0, 1.0, 0.0)),  # the released code's L = 5 weights
        ((4, 3, 3), (3, 4), (2.0, 2.0, 1.0, 1.0, 1.0, 0.0)),
    ],
)
def test_tpma_steps_for_any_sid_length(
    levels: tuple[int, ...], unique: tuple[int, int], weights: tuple[float, ...]
) -> None:
    book = _book(levels, unique)
    learner = _learner(book)
    assert learner.position_weights == weights
    stats = learner.step(_batch(learner))
    assert not stats.skipped and 0.0 < stats.values["distinct_sids"] <= 1.0 and stats.values["entropy"] > 0.0
    with pytest.raises(ValueError, match="position_weights has 7 entries"):
        _learner(book, position_weights=(1.0,) * 7)


def test_a_warm_start_with_nothing_to_learn_is_refused_and_a_stop_saves_nothing(tmp_path: Path) -> None:
    import threading

    from streamrl.configs.schema import WarmStartConfig
    from streamrl.rl.warm import run_warm_start, warm_records

    learner = _learner(algo="tpma", beta=0.1)
    unengaged = [
        dict(r, items=[dict(i, clicked=False, ordered=False) for i in r["items"]]) for r in _records()
    ]
    wc = WarmStartConfig(records=str(tmp_path), steps=5)
    with pytest.raises(InitError, match="none of 12 records has a click or an order"):
        run_warm_start(learner, unengaged, wc, 0)
    with pytest.raises(InitError, match="no Parquet files"):
        warm_records(wc, None)  # type: ignore[arg-type]
    stop = threading.Event()
    stop.set()
    before = [p.detach().clone() for p in learner.model.parameters()]
    assert run_warm_start(learner, _records(), wc, 0, stop=stop) is None
    assert learner.steps == 0 and learner.ref is None
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, learner.model.parameters(), strict=True))
    done = run_warm_start(learner, _records(), wc, 0)
    assert done is not None and done["steps"] == 5 and learner.steps == 5
    assert learner.ref is not None  # beta > 0: the SFT model became the KL reference
