"""Advantages for GRPO (Eq.11) and TPMA-GRPO (Eq.13–17), faithful to the authors' released code
(onesearch-family `rlhf/tpma.py`). Pure functions: numpy arrays or torch tensors in, the same kind
out (torch inputs are computed in float64 on the CPU and returned on their device and dtype).

    match[i,t,l] = rollouts[i,l] == targets[t,l]
    R[i,l]  = max_t sum_{k<=l} w_k * match[i,t,k]     the max is taken separately at each l (code)
    U[i,l]  = max_t sum_{k<=l} match[i,t,k]           unweighted, for the gate
    dR[i,1] = R[i,1];  dR[i,l] = R[i,l] - R[i,l-1]    marginal contribution of position l
    A_pos[:,l] = (dR[:,l] - mean_i) / (std_i + eps)   std unbiased (N-1), per position
    gates[i,1] = 1;  gates[i,l] = clamp(U[i,l-1] / (l-1), 0, 1)
    A_item = (R_item - mean) / (std + eps)            std unbiased
    adv = A_pos + w_item * A_item[:, None]

Degenerate cases, named: a group of one (G == 1) has zero advantages (the code's unbiased std of
one value is NaN; we return 0); zero spread (all equal) gives 0 through eps; no ground-truth items
(T == 0) gives dR = 0 and gates [1, 0, 0, ...]; an invalid SID simply matches nothing; a missing
item reward is the caller's to fill (non-finite rewards are refused here).
Deviation (numbered in the learner's docstring): `w_item` defaults to 1.0, the released code to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POSITION_WEIGHTS = (2.0, 2.0, 1.0, 1.0, 0.0)  # seed code: w_l = 2 for l < 3, 1 for 3 <= l < L, 0 at L


def position_weights(L: int) -> tuple[float, ...]:
    """The released code's weights for any L ≥ 2: 0 at the last position L (the item's own code),
    else 2 for positions 1–2 and 1 after them: L=5 (2, 2, 1, 1, 0), L=3 (2, 2, 0), L=2 (2, 0)."""
    return tuple(0.0 if l == L else 2.0 if l < 3 else 1.0 for l in range(1, L + 1))


def _to_numpy(x: Any) -> tuple[np.ndarray, Any]:
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().double().numpy(), x
    return np.asarray(x), None


def _like(value: np.ndarray, template: Any, dtype: Any = None) -> Any:
    if template is None:
        return value
    import torch

    return torch.as_tensor(value, dtype=dtype or torch.float32, device=template.device)


def _normalize(x: np.ndarray, eps: float, axis: int = 0) -> np.ndarray:
    """(x - mean) / (unbiased std + eps) along `axis`; zeros for a group of one."""
    n = x.shape[axis]
    if n < 2:
        return np.zeros_like(x, dtype=np.float64)
    return (x - x.mean(axis=axis, keepdims=True)) / (x.std(axis=axis, ddof=1, keepdims=True) + eps)


def grpo_advantages(rewards: Any, eps: float = 1e-8) -> Any:
    """Eq.11: sequence-level advantages of a group, [G] -> [G]."""
    r, template = _to_numpy(rewards)
    r = r.astype(np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("non-finite reward in the group")
    return _like(_normalize(r, eps), template, getattr(rewards, "dtype", None))


def tpma_advantages(
    rollouts: Any,
    targets: Any,
    item_rewards: Any,
    position_weights: tuple[float, ...] = POSITION_WEIGHTS,
    w_item: float = 1.0,
    eps: float = 1e-8,
) -> tuple[Any, Any]:
    """rollouts int [G, L]; targets int [T, L] (T may be 0); item_rewards float [G]
    -> (adv float [G, L], gates float [G, L])."""
    ro, template = _to_numpy(rollouts)
    tg, _ = _to_numpy(targets)
    ri, _ = _to_numpy(item_rewards)
    G, L = ro.shape
    if len(position_weights) != L:
        raise ValueError(f"position_weights has {len(position_weights)} entries for L = {L}")
    ri = ri.astype(np.float64).reshape(G)
    if not np.all(np.isfinite(ri)):
        raise ValueError("non-finite item reward")
    tg = tg.reshape(-1, L)
    gates = np.zeros((G, L))
    gates[:, 0] = 1.0
    if tg.shape[0] == 0:  # no ground-truth items: nothing to credit position by position
        d_r = np.zeros((G, L))
    else:
        match = (ro[:, None, :] == tg[None, :, :]).astype(np.float64)  # [G, T, L]
        w = np.asarray(position_weights, dtype=np.float64)
        r_pref = (match * w).cumsum(axis=2).max(axis=1)  # [G, L] weighted prefix reward
        u_pref = match.cumsum(axis=2).max(axis=1)  # [G, L] unweighted
        d_r = np.concatenate([r_pref[:, :1], np.diff(r_pref, axis=1)], axis=1)  # [G, L]
        ell = np.arange(1, L)  # gate at 0-indexed position l uses U at l-1, divided by l
        gates[:, 1:] = np.clip(u_pref[:, :-1] / ell, 0.0, 1.0)
    adv = _normalize(d_r, eps, axis=0) + w_item * _normalize(ri, eps)[:, None]
    return _like(adv, template), _like(gates, template)
