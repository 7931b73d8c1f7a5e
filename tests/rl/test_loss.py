"""Losses with hand-computed expectations (torchtune style: the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from streamrl.rl.loss import grpo_loss, tpma_grpo_loss


def test_tpma_loss_on_policy_is_minus_mean_gated_advantage() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.25]]))
    adv = torch.tensor([[1.0, 2.0], [-1.0, 4.0]])
    gates = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
    mask = torch.ones(2, 2)
    # ratio = 1 everywhere; gated adv = [1, 1, -1, 0] -> mean 0.25 -> loss -0.25
    loss, stats = tpma_grpo_loss(logp, logp.clone(), adv, gates, mask, sft_nll=None)
    assert loss.item() == pytest.approx(-0.25)
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_tpma_loss_ratio_mask_sft_and_kl() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.5)]])
    old = torch.tensor([[math.log(0.25), math.log(0.5)]])
    adv = torch.tensor([[1.0, 3.0]])
    gates = torch.ones(1, 2)
    mask = torch.tensor([[1.0, 0.0]])  # the second token is padding
    # ratio[0] = 0.5/0.25 = 2, not clipped; valid mean of gate*ratio*adv = 2 -> pg = -2
    # + 0.1 * sft 1.5 = -1.85; KL with ref == logp is 0
    loss, stats = tpma_grpo_loss(
        logp,
        old,
        adv,
        gates,
        mask,
        sft_nll=torch.tensor(1.5),
        sft_weight=0.1,
        ref_logp=logp.clone(),
        beta=0.04,
    )
    assert loss.item() == pytest.approx(-1.85)
    assert stats["kl"] == pytest.approx(0.0)
    # a huge log-ratio is clamped at 20 before exp: finite
    big, _ = tpma_grpo_loss(
        torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1)
    )
    assert big.item() == pytest.approx(-math.exp(20))


def test_grpo_loss_clips() -> None:
    # token ratios 2.0 and 0.5 with A = +1 on sequence 0 and A = -1 on sequence 1
    logp = torch.log(torch.tensor([[0.5], [0.25]]))
    old = torch.log(torch.tensor([[0.25], [0.5]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    # seq 0: min(2*1, 1.2*1) = 1.2 ; seq 1: min(0.5*-1, 0.8*-1) = -0.8 ; mean 0.2 -> loss -0.2
    loss, stats = grpo_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clip_frac"] == pytest.approx(1.0)


def test_gradients_flow_and_are_finite() -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    logp = torch.log_softmax(logits, dim=-1)
    loss, _ = tpma_grpo_loss(logp, logp.detach(), torch.randn(4, 5), torch.rand(4, 5), torch.ones(4, 5))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
