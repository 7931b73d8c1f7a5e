"""Issue #11 §2–3: micro-batching gives the one-batch gradient (so peak memory follows the
micro-batch, not B×G), the learning-rate schedule, and the sampling generators' state in checkpoints."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from streamrl.checkpoints.store import CheckpointStore
from streamrl.configs.schema import LearnConfig
from streamrl.rl.checkpointing import restore_state, save
from streamrl.rl.learner import Learner, lr_factor

from .test_anchors import _batch, _learner, _sids_dir


def _grads(learner: Learner) -> list[torch.Tensor]:
    learner.gen.manual_seed(11)
    stats = learner.accumulate(_batch(learner))
    assert not stats.skipped
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in learner.model.parameters()]


@pytest.mark.parametrize("algo", ["tpma", "grpo", "sft"])
@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_accumulate_the_one_batch_gradient(algo: str, micro: int) -> None:
    """B = 4 prompts in micro-batches of 1 (4 passes) or 3 (uneven: 3 + 1), with the SFT term and the
    KL anchor on: the same rollouts and the same gradient as one pass over the batch."""
    one = _learner(algo=algo, sft_weight=0.5, beta=0.2)
    one.anchor()
    with torch.no_grad():  # off the reference, so the KL term has a gradient
        for n, p in enumerate(one.model.parameters()):
            p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=torch.float32) + n).reshape(p.shape))
    chunked = copy.deepcopy(one)
    chunked.cfg = one.cfg.model_copy(update={"micro_batch": micro})
    g1, g2 = _grads(one), _grads(chunked)
    assert sum(float(g.abs().sum()) for g in g1) > 1e-3  # a real gradient, not zeros on both sides
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the step's statistics agree where they are sums of per-micro-batch shares
    one.gen.manual_seed(11)
    chunked.gen.manual_seed(11)
    s1, s2 = one.accumulate(_batch(one)).values, chunked.accumulate(_batch(chunked)).values
    for key in ("loss", "reward_mean", "valid_sid_rate") if algo != "sft" else ("loss",):
        assert s1[key] == pytest.approx(s2[key], rel=1e-4, abs=1e-6), key


def test_the_learning_rate_schedule() -> None:
    cfg = LearnConfig(lr=1e-3, lr_schedule="cosine", warmup_steps=10, decay_steps=100, lr_min_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cfg, 110) == pytest.approx(0.1) and lr_factor(cfg, 10_000) == pytest.approx(0.1)
    const = LearnConfig(warmup_steps=4)
    assert [lr_factor(const, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    # the learner applies it, counted from its optimiser's (re)start, and reports it per step
    learner = _learner(lr_schedule="cosine", warmup_steps=2, decay_steps=4, lr_min_ratio=0.0)
    lrs = [learner.step(_batch(learner)).values["lr"] for _ in range(7)]
    base = learner.cfg.lr
    assert lrs == pytest.approx(
        [
            base * f
            for f in (
                0.5,
                1.0,
                1.0,
                0.5 + 0.5 * math.cos(math.pi / 4),
                0.5,
                0.5 - 0.5 * math.cos(math.pi / 4),
                0.0,
            )
        ],
        abs=1e-9,
    )
    learner.reset_optimizer(5e-3)  # e.g. RL after the warm start: warm-up again from the new base
    assert learner.step(_batch(learner)).values["lr"] == pytest.approx(5e-3 * 0.5)


def test_a_checkpoint_keeps_the_sampling_state_and_the_schedule(tmp_path: Path) -> None:
    """A resumed learner draws the rollouts an uninterrupted one would have drawn."""
    a = _learner(warmup_steps=3)
    a.codebook_dir = _sids_dir(tmp_path, a.book, "sids")
    a.step(_batch(a))
    path = save(CheckpointStore(tmp_path / "run"), a, None)
    b = _learner(warmup_steps=3)
    restore_state(b, path)
    assert (b.steps, b.lr_origin, b.base_lr) == (a.steps, a.lr_origin, a.base_lr)
    assert torch.equal(a.gen.get_state(), b.gen.get_state()) and a.rng.random() == b.rng.random()
    assert torch.equal(torch.rand(5, generator=a.gen), torch.rand(5, generator=b.gen))
