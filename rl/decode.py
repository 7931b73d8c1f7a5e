"""The one constrained decoder of serving, `streamrl eval` and the push gate: batched beam search over
real SIDs, every beam of a prompt sharing that prompt's KV cache (tree attention).

The prompts (left-padded) go through the model once, keeping only the last position's logits. Then,
per SID level, one forward feeds each prompt's W new beam tokens *side by side in the prompt's own
row*: a 4D attention mask lets each new token see the prompt and its own ancestors only, at the
position it would have in a plain sequential decode. So the prompt's keys and values are computed and
stored once per prompt, not copied into W beam rows and re-indexed at every level; per level the
cache grows by W columns. The logits are exactly those of decoding each beam on its own.

At level l a beam's candidates are the codes the tensor trie (rl/trie.py) allows after its prefix,
scored by the cumulative log-probability under the level-restricted distribution (log-softmax over
level l's codes, as `sequence_logp` without the trie); each prompt keeps its `beam` best. With `beam`
at least the largest number of distinct prefixes at any level this is exact: the top-K of an
exhaustive score over all items (tests/rl/test_decode.py).

The model's attention must accept a custom 4D mask: transformers' `sdpa` (the default) and `eager` do;
FlashAttention-2 does not, and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from streamrl.rl.hf_compat import cached_forward
from streamrl.rl.policy import SidVocab, _positions

Beams = list[tuple[tuple[int, ...], float]]


@torch.inference_mode()
def beam_search(model: Any, tok: Any, prompts: Sequence[str], vocab: SidVocab, beam: int) -> list[Beams]:
    """For each prompt, up to `beam` real SIDs with their cumulative log-probabilities, best first."""
    if not prompts:
        return []
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    if attn and "flash" in str(attn):
        raise ValueError(f"the SID decoder needs 4D attention masks; load the model with sdpa, not {attn}")
    device = next(model.parameters()).device
    trie = vocab.tensor_trie
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    pmask = enc["attention_mask"].to(device)  # [B, T0]
    logits, past = cached_forward(model, enc["input_ids"].to(device), pmask, _positions(pmask), last=True)
    logits = logits[:, -1]  # [B * width, V]
    B, width = len(prompts), 1  # beams per prompt so far: one empty prefix
    lengths = pmask.sum(1, keepdim=True)  # [B, 1]: the first SID token's position
    dtype = next(model.parameters()).dtype
    blocked = torch.finfo(dtype).min
    score = torch.zeros(B, 1, device=device)
    nodes = trie.root(B).to(device)  # [B * width]
    codes = torch.zeros(B, 1, 0, dtype=torch.long, device=device)
    sees = torch.zeros(B, 1, 0, dtype=torch.bool, device=device)  # [B, width, generated columns]
    for lvl in range(vocab.L):
        level_ids = vocab.level_ids[lvl].to(device)
        K = len(level_ids)
        logp = torch.log_softmax(logits[:, level_ids].float(), dim=-1) + trie.mask(lvl, nodes)
        total = (score.reshape(B, width, 1) + logp.reshape(B, width, K)).reshape(B, width * K)
        top, idx = total.topk(min(beam, width * K), dim=1)  # [B, W]
        parent, code = idx // K, idx % K
        W = top.shape[1]
        codes = torch.cat([codes.gather(1, parent[..., None].expand(B, W, lvl)), code[..., None]], dim=2)
        flat_parent = (parent + torch.arange(B, device=device)[:, None] * width).reshape(-1)
        nodes = trie.step(lvl, nodes[flat_parent], code.reshape(-1))
        score, width = top, W
        if lvl == vocab.L - 1:
            break
        # the new tokens see their parent's ancestors and themselves (columns appended after them)
        G = sees.shape[2]
        sees = torch.cat(
            [
                sees.gather(1, parent[..., None].expand(B, W, G)),
                torch.eye(W, dtype=torch.bool, device=device).expand(B, W, W),
            ],
            dim=2,
        )
        visible = torch.cat([pmask.bool()[:, None, :].expand(B, W, pmask.shape[1]), sees], dim=2)
        mask4 = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, blocked)[:, None]
        logits, past = cached_forward(model, level_ids[code], mask4, (lengths + lvl).expand(B, W), past)
        logits = logits.reshape(B * W, -1)
    leaves = nodes.reshape(B, -1).tolist()  # SID index per beam, -1 for a dead one (too few items)
    return [
        [(tuple(s), v) for s, v, n in zip(sids, scores, items, strict=True) if n >= 0 and v > float("-inf")]
        for sids, scores, items in zip(codes.tolist(), score.tolist(), leaves, strict=True)
    ]
