"""TPMA / GRPO advantages: hand-computed cases and an independent loop implementation of the
released code (onesearch-family rlhf/tpma.py), on random groups with ties and T = 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrl.rl.advantages import POSITION_WEIGHTS, grpo_advantages, position_weights, tpma_advantages


def released_code(
    rollouts: list[list[int]],
    targets: list[list[int]],
    item_rewards: list[float],
    w: tuple[float, ...],
    w_item: float,
    eps: float = 1e-8,
):
    """The released code's algorithm written as plain loops (not vectorised, no numpy)."""
    G, L = len(rollouts), len(rollouts[0])
    if not targets:
        marginal = [[0.0] * L for _ in range(G)]
        gates = [[1.0] + [0.0] * (L - 1) for _ in range(G)]
    else:
        R = [
            [
                max(sum(w[k] * (rollouts[i][k] == t[k]) for k in range(l + 1)) for t in targets)
                for l in range(L)
            ]
            for i in range(G)
        ]
        U = [
            [
                max(sum(1.0 * (rollouts[i][k] == t[k]) for k in range(l + 1)) for t in targets)
                for l in range(L)
            ]
            for i in range(G)
        ]
        marginal = [[R[i][0]] + [R[i][l] - R[i][l - 1] for l in range(1, L)] for i in range(G)]
        gates = [[1.0] + [min(max(U[i][l - 1] / l, 0.0), 1.0) for l in range(1, L)] for i in range(G)]

    def norm(col: list[float]) -> list[float]:
        if len(col) < 2:
            return [0.0] * len(col)
        mean = sum(col) / len(col)
        std = math.sqrt(sum((c - mean) ** 2 for c in col) / (len(col) - 1))
        return [(c - mean) / (std + eps) for c in col]

    cols = [norm([marginal[i][l] for i in range(G)]) for l in range(L)]
    item = norm(item_rewards)
    adv = [[cols[l][i] + w_item * item[i] for l in range(L)] for i in range(G)]
    return adv, gates


def test_hand_computed_group() -> None:
    # L = 3, weights (2, 2, 0); one target [1, 2, 3]; rollouts: exact, right first token, nothing
    rollouts = np.array([[1, 2, 3], [1, 9, 9], [7, 7, 7]])
    targets = np.array([[1, 2, 3]])
    # R = [[2,4,4],[2,2,2],[0,0,0]] -> dR = [[2,2,0],[2,0,0],[0,0,0]]
    # column 0: [2,2,0] mean 4/3, std sqrt(((2/3)^2*2 + (4/3)^2)/2) = sqrt(4/3) = 1.1547
    # U = [[1,2,3],[1,1,1],[0,0,0]] -> gates = [[1,1,1],[1,1,0.5],[1,0,0]]
    adv, gates = tpma_advantages(rollouts, targets, np.zeros(3), (2.0, 2.0, 0.0), w_item=0.0)
    s = math.sqrt(4 / 3)
    assert adv[:, 0] == pytest.approx([(2 - 4 / 3) / s, (2 - 4 / 3) / s, (0 - 4 / 3) / s], abs=1e-6)
    # column 1: [2,0,0] mean 2/3, std sqrt(((4/3)^2 + 2*(2/3)^2)/2) = sqrt(4/3)
    assert adv[:, 1] == pytest.approx([(2 - 2 / 3) / s, -2 / 3 / s, -2 / 3 / s], abs=1e-6)
    assert adv[:, 2] == pytest.approx([0, 0, 0], abs=1e-6)  # all equal: zero, not NaN
    assert gates.tolist() == [[1, 1, 1], [1, 1, 0.5], [1, 0, 0]]


def test_degenerate_cases() -> None:
    adv, gates = tpma_advantages(np.array([[1, 2, 3, 4, 5]]), np.array([[1, 2, 3, 4, 5]]), np.array([7.0]))
    assert np.all(adv == 0) and not np.any(np.isnan(adv))  # G == 1
    adv, gates = tpma_advantages(
        np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]]),
        np.zeros((0, 5), dtype=int),
        np.array([1.0, 3.0]),
        w_item=0.0,
    )
    assert np.all(adv == 0) and gates.tolist() == [[1, 0, 0, 0, 0]] * 2  # T == 0
    assert grpo_advantages(np.array([5.0])).tolist() == [0.0]
    assert grpo_advantages(np.array([1.0, 3.0])) == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])
    with pytest.raises(ValueError):
        tpma_advantages(
            np.array([[1, 2, 3, 4, 5]] * 2), np.array([[1, 2, 3, 4, 5]]), np.array([1.0, float("nan")])
        )


def test_default_weights_are_the_released_codes() -> None:
    assert position_weights(5) == POSITION_WEIGHTS == (2.0, 2.0, 1.0, 1.0, 0.0)
    assert position_weights(3) == (2.0, 2.0, 0.0)


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_released_algorithm_on_random_groups(seed: int) -> None:
    rng = np.random.default_rng(seed)
    G, L, T = int(rng.integers(1, 9)), 5, int(rng.integers(0, 4))
    vocab = int(rng.integers(2, 4))  # a tiny vocabulary: many ties and partial matches
    rollouts = rng.integers(0, vocab, size=(G, L))
    targets = rng.integers(0, vocab, size=(T, L))
    if T and G > 1:  # targets that win at different positions
        rollouts[0] = targets[0]
        rollouts[-1, :2] = targets[-1, :2]
    item = rng.normal(size=G).round(1)
    w_item = float(rng.choice([0.0, 1.0, 0.5]))
    adv, gates = tpma_advantages(rollouts, targets, item, POSITION_WEIGHTS, w_item)
    want_adv, want_gates = released_code(
        rollouts.tolist(), targets.tolist(), item.tolist(), POSITION_WEIGHTS, w_item
    )
    assert adv == pytest.approx(np.array(want_adv), abs=1e-9)
    assert gates == pytest.approx(np.array(want_gates))


def test_torch_in_torch_out() -> None:
    rollouts = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 0, 0, 0], [9, 9, 9, 9, 9]])
    targets = torch.tensor([[1, 2, 3, 4, 5]])
    adv, gates = tpma_advantages(rollouts, targets, torch.tensor([3.0, 1.0, 0.0]))
    assert isinstance(adv, torch.Tensor) and isinstance(gates, torch.Tensor)
    ref_adv, ref_gates = tpma_advantages(rollouts.numpy(), targets.numpy(), np.array([3.0, 1.0, 0.0]))
    assert gates.numpy() == pytest.approx(ref_gates)
    assert adv.numpy() == pytest.approx(ref_adv, abs=1e-6)
    assert isinstance(grpo_advantages(torch.tensor([1.0, 2.0])), torch.Tensor)
