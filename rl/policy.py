"""The policy: a transformers causal LM that writes an item's semantic ID as L tokens.

Tokenizer: byte-level (every Unicode query, Chinese included, is its UTF-8 bytes) built offline with
`tokenizers` — no download — plus one normal (not special) token per SID code and level, e.g.
`<a_12><b_7><c_201><d_3><e_9>`, so decoding keeps them. The prompt carries the query and the user's
recent items' SIDs; keywords never enter it (serving does not have them).

Decoding: G samples per prompt in one batched, KV-cached loop. At step l only level-l SID tokens are
allowed; with `constrained=True` a prefix trie over the codebook also keeps every rollout a real item.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AddedToken, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "<sep>"}


def level_name(level: int) -> str:
    return string.ascii_lowercase[level]


def sid_token(level: int, code: int) -> str:
    return f"<{level_name(level)}_{code}>"


def build_tokenizer(level_sizes: Sequence[int]) -> PreTrainedTokenizerFast:
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL)
    tok.add_tokens(
        [
            AddedToken(sid_token(lvl, c), special=False, normalized=False)
            for lvl, size in enumerate(level_sizes)
            for c in range(size)
        ]
    )
    return tok


def format_prompt(query: str, history_sids: Sequence[Sequence[int]], tok: PreTrainedTokenizerFast) -> str:
    history = "".join("".join(sid_token(lvl, c) for lvl, c in enumerate(s)) for s in history_sids)
    return f"{tok.bos_token}query: {query}{tok.sep_token}history: {history}{tok.sep_token}sid: "


@dataclass(frozen=True)
class PolicyShape:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 512


def build_model(tok: PreTrainedTokenizerFast, shape: PolicyShape, seed: int = 0) -> LlamaForCausalLM:
    """A small randomly initialised Llama-architecture model built from a config (no download)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


class SidVocab:
    """Token ids of the SID codes per level, and the prefix trie of the codebook's real items."""

    def __init__(
        self, tok: PreTrainedTokenizerFast, level_sizes: Sequence[int], sids: Sequence[Sequence[int]] = ()
    ) -> None:
        self.level_ids = [
            torch.tensor(tok.convert_tokens_to_ids([sid_token(lvl, c) for c in range(size)]))
            for lvl, size in enumerate(level_sizes)
        ]
        self.L = len(level_sizes)
        self.trie: dict[tuple[int, ...], set[int]] = {}
        for sid in sids:
            for lvl in range(self.L):
                self.trie.setdefault(tuple(sid[:lvl]), set()).add(int(sid[lvl]))
        self.items = {tuple(int(c) for c in s) for s in sids}

    def allowed_codes(self, prefix: tuple[int, ...]) -> list[int]:
        return sorted(self.trie.get(prefix, ()))


@torch.no_grad()
def rollout(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    vocab: SidVocab,
    G: int,
    temperature: float = 1.0,
    constrained: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample G SIDs per prompt: returns (codes [B*G, L] int, logp [B*G, L] of the sampled tokens
    under the sampling distribution). Prompts are left-padded; one forward pass per step reuses the
    KV cache."""
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    ids = enc["input_ids"].repeat_interleave(G, 0).to(device)  # [N, T]
    mask = enc["attention_mask"].repeat_interleave(G, 0).to(device)  # [N, T]
    N = ids.shape[0]
    codes = torch.zeros((N, vocab.L), dtype=torch.long)
    logps = torch.zeros((N, vocab.L))
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :]  # [N, V]
    for lvl in range(vocab.L):
        level_ids = vocab.level_ids[lvl].to(device)
        scores = logits[:, level_ids].float() / max(temperature, 1e-6)  # [N, K_l]
        if constrained:
            allow = torch.full_like(scores, float("-inf"))
            for n in range(N):
                ok = vocab.allowed_codes(tuple(codes[n, :lvl].tolist()))
                if ok:
                    allow[n, ok] = 0.0
            scores = scores + allow
        probs = torch.softmax(scores, dim=-1)
        # sampled on the CPU so a seeded CPU generator serves any device
        pick = torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(device)
        codes[:, lvl] = pick.cpu()
        logps[:, lvl] = torch.log(probs.gather(1, pick[:, None]).squeeze(1).clamp_min(1e-30)).cpu()
        next_ids = level_ids[pick][:, None]  # [N, 1]
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        out = model(
            input_ids=next_ids,
            attention_mask=mask,
            past_key_values=past,
            use_cache=True,
            position_ids=_positions(mask)[:, -1:],
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :]
    return codes, logps


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, the same in sampling and in scoring."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def sequence_logp(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    vocab: SidVocab,
    codes: torch.Tensor,
    G: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Teacher-forced log-probs [B*G, L] of `codes` under the level-restricted distribution that
    `rollout` samples from (unconstrained), with gradients: the `logp` of the losses."""
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    ids = enc["input_ids"].repeat_interleave(G, 0).to(device)  # [N, T]
    mask = enc["attention_mask"].repeat_interleave(G, 0).to(device)
    codes = codes.to(device)
    sid_ids = torch.stack([vocab.level_ids[lvl].to(device)[codes[:, lvl]] for lvl in range(vocab.L)], 1)
    full = torch.cat([ids, sid_ids], dim=1)  # [N, T + L]
    full_mask = torch.cat([mask, torch.ones_like(sid_ids)], dim=1)
    logits = model(input_ids=full, attention_mask=full_mask, position_ids=_positions(full_mask)).logits
    T = ids.shape[1]
    out = []
    for lvl in range(vocab.L):
        step = logits[:, T - 1 + lvl, :][:, vocab.level_ids[lvl].to(device)].float() / temperature
        out.append(torch.log_softmax(step, dim=-1).gather(1, codes[:, lvl : lvl + 1]).squeeze(1))
    return torch.stack(out, dim=1)  # [N, L]
