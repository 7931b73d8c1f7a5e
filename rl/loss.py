"""Policy losses. One function per objective (STYLE.md §8); each returns (loss, stats).

Shapes: N rollouts (B prompts x G), L SID tokens each. `logp`, `old_logp`, `ref_logp` are the
per-token log-probabilities of the sampled tokens [N, L]; `mask` [N, L] marks valid tokens.
"""

from __future__ import annotations

import torch


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def _kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate, exp(ref - logp) - (ref - logp) - 1 (k3; >= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of the k3 estimate of KL(pi || ref): the anchor term's value."""
    return _masked_mean(_kl_k3(logp, ref_logp), mask)


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Importance ratio with the log-ratio clamped to [-20, 20] (finite for any input)."""
    return torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))


def _finish(
    loss: torch.Tensor,
    stats: dict[str, float],
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
    sft_nll: torch.Tensor | None,
    sft_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Add the anchors every RL objective shares: the SFT term (sft_weight * per-token mean NLL of
    the prompts' first target SIDs, as the released code) and the reference KL (beta * mean k3)."""
    if sft_nll is not None and sft_weight:
        loss = loss + sft_weight * sft_nll
        stats["sft_nll"] = float(sft_nll.detach())
    if ref_logp is not None and beta:
        kl = kl_k3(logp, ref_logp, mask)
        loss = loss + beta * kl
        stats["kl"] = float(kl.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats


def tpma_grpo_loss(
    logp: torch.Tensor,  # [N, L]
    old_logp: torch.Tensor,  # [N, L]
    adv: torch.Tensor,  # [N, L] token-position advantages (rl/advantages.py)
    gates: torch.Tensor,  # [N, L] prefix gates
    mask: torch.Tensor,  # [N, L]
    sft_nll: torch.Tensor | None = None,  # [] per-token mean NLL of the first target SID per prompt
    sft_weight: float = 0.1,
    ref_logp: torch.Tensor | None = None,  # [N, L]
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq.19: -mean over valid (i, l) of gate * ratio * adv, no clipping (the gate regularises),
    ratio = exp(clamp(logp - old_logp, -20, 20)); + sft_weight * CE on the first target SID;
    + beta * reference KL."""
    ratio = _ratio(logp, old_logp)  # [N, L]
    pg = -_masked_mean(gates * ratio * adv, mask)
    loss = pg
    stats = {
        "pg_loss": float(pg.detach()),
        "ratio_mean": float(_masked_mean(ratio, mask).detach()),
        "gate_mean": float(_masked_mean(gates, mask).detach()),
    }
    return _finish(loss, stats, logp, ref_logp, mask, beta, sft_nll, sft_weight)


def grpo_loss(
    logp: torch.Tensor,  # [N, L]
    old_logp: torch.Tensor,  # [N, L]
    adv: torch.Tensor,  # [N] sequence-level advantages (Eq.11)
    mask: torch.Tensor,  # [N, L]
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,  # [N, L]
    beta: float = 0.0,
    sft_nll: torch.Tensor | None = None,  # [] per-token mean NLL of the first target SID per prompt
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq.12: -mean over valid tokens of min(ratio * A, clip(ratio, 1-eps, 1+eps) * A);
    + sft_weight * CE on the first target SID; + beta * reference KL (the same anchors as TPMA)."""
    ratio = _ratio(logp, old_logp)  # [N, L]
    a = adv[:, None]  # [N, 1]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    pg = -_masked_mean(surrogate, mask)
    loss = pg
    clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).float()
    stats = {"pg_loss": float(pg.detach()), "clip_frac": float(_masked_mean(clipped, mask).detach())}
    return _finish(loss, stats, logp, ref_logp, mask, beta, sft_nll, sft_weight)
