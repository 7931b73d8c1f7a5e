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
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from streamrl.rl.hf_compat import cached_forward, select_rows
from streamrl.rl.trie import SidTrie

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "<sep>"}


def level_name(level: int) -> str:
    return string.ascii_lowercase[level]


def sid_token(level: int, code: int) -> str:
    return f"<{level_name(level)}_{code}>"


def add_sid_tokens(tok: PreTrainedTokenizerBase, level_sizes: Sequence[int]) -> int:
    """Add the SID tokens a tokenizer lacks, as normal tokens; returns how many were added."""
    have = tok.get_vocab()
    missing = [
        AddedToken(sid_token(lvl, c), special=False, normalized=False)
        for lvl, size in enumerate(level_sizes)
        for c in range(size)
        if sid_token(lvl, c) not in have
    ]
    return tok.add_tokens(missing) if missing else 0


def build_tokenizer(level_sizes: Sequence[int]) -> PreTrainedTokenizerFast:
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL)
    add_sid_tokens(tok, level_sizes)
    return tok


MAX_QUERY_TOKENS = 128  # the query's share of a prompt; the rest is history SIDs (history_len × L)


def clip_query(query: str, tok: PreTrainedTokenizerBase, max_tokens: int = MAX_QUERY_TOKENS) -> str:
    """The query cut to its first `max_tokens` tokens and `16 × max_tokens` characters (a 1 MB query
    never reaches the tokenizer whole, nor the model)."""
    if len(query) * 4 <= max_tokens:  # a character is at most 4 tokens (4 UTF-8 bytes, byte-level)
        return query
    head = query[: max_tokens * 16]
    ids = tok(head, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return head
    # a cut inside a multi-byte character decodes to U+FFFD, which would re-tokenise longer: drop it
    return str(tok.decode(ids[:max_tokens])).rstrip("\ufffd")


def format_prompt(
    query: str, history_sids: Sequence[Sequence[int]], tok: PreTrainedTokenizerBase, clip: bool = True
) -> str:
    """A pretrained tokenizer without bos/sep tokens (Qwen, say) gets a newline as separator. The
    query is clipped to MAX_QUERY_TOKENS, the same in training, eval and serving (`clip=False`: the
    caller has counted the query's tokens and knows it fits)."""
    if clip:
        query = clip_query(query, tok)
    history = "".join("".join(sid_token(lvl, c) for lvl, c in enumerate(s)) for s in history_sids)
    bos, sep = tok.bos_token or "", tok.sep_token or "\n"
    return f"{bos}query: {query}{sep}history: {history}{sep}sid: "


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


def load_pretrained(path: str, level_sizes: Sequence[int]) -> tuple[Any, PreTrainedTokenizerBase]:
    """Any local transformers causal LM (e.g. Qwen3-0.6B, or a streamrl checkpoint) and its tokenizer,
    offline; SID tokens it lacks are added and the embeddings resized to match."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    added = add_sid_tokens(tok, level_sizes)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if added or model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    return model, tok


class SidVocab:
    """Token ids of the SID codes per level, and the prefix trie of the codebook's real items."""

    def __init__(
        self, tok: PreTrainedTokenizerBase, level_sizes: Sequence[int], sids: Sequence[Sequence[int]] = ()
    ) -> None:
        self.level_ids = [
            torch.tensor(tok.convert_tokens_to_ids([sid_token(lvl, c) for c in range(size)]))
            for lvl, size in enumerate(level_sizes)
        ]
        self.L = len(level_sizes)
        self.tensor_trie = SidTrie(sids, level_sizes)
        self.items = {tuple(int(c) for c in s) for s in self.tensor_trie.sids.tolist()}

    def trie_mask(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """[N, K_level] additive mask: 0 where the trie allows a code after each row's first `level`
        codes, -inf elsewhere (a prefix the trie does not know allows every code, as a constrained
        rollout does), on the device of `codes`."""
        return self.tensor_trie.mask(level, self.tensor_trie.walk(codes, level))


def rollout(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    vocab: SidVocab,
    G: int,
    temperature: float = 1.0,
    constrained: bool = False,
    generator: torch.Generator | None = None,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample G SIDs per prompt: returns (codes [B*G, L] int on the CPU, logp [B*G, L] of the sampled
    tokens under the distribution sampled from, on the model's device).

    The B prompts (left-padded) go through the model once and their KV cache is repeated G times, so
    the G samples of a prompt share its pass; then one cached forward per SID level. `grad=True`
    keeps the graph, so the learner's policy-gradient loss uses these log-probs directly (a single
    inner epoch: the ratio is 1 with a live gradient) instead of scoring the rollouts a second time.
    """
    codes, logp, _ = rollout_with_targets(
        model, tok, prompts, vocab, G, temperature, constrained, generator, grad, [None] * len(prompts)
    )
    return codes, logp


def rollout_with_targets(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    vocab: SidVocab,
    G: int,
    temperature: float,
    constrained: bool,
    generator: torch.Generator | None,
    grad: bool,
    targets: Sequence[Sequence[int] | None],
    stats: dict[str, float] | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rollout`, plus one teacher-forced row per prompt that has a target SID, in the same pass: its
    log-probs [T, L] (T = prompts with a target) are under the plain level-restricted distribution
    (temperature 1, no trie) — what the SFT cross-entropy needs — so the SFT term costs L rows of
    cached decoding instead of a second forward pass over the prompts. `stats`, when given, receives
    `entropy`: the mean per-token entropy (nats) of the distributions the rollouts sampled from.
    `uniforms` [B*G, L] in [0, 1), when given, pick each token by inverse CDF instead of drawing from
    `generator`: a row's sample then depends on its own numbers only, so rolling the prompts out in
    micro-batches samples exactly what one batch would (the learner draws them once per step)."""
    with torch.set_grad_enabled(grad):
        tok.padding_side = "left"
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(model.parameters()).device
        ids = enc["input_ids"].to(device)  # [B, T]
        mask = enc["attention_mask"].to(device)  # [B, T]
        logits, past = cached_forward(model, ids, mask, _positions(mask), last=True)
        B = ids.shape[0]
        forced = [b for b in range(B) if targets[b] is not None]
        # rows: G samples of prompt 0, ..., G samples of prompt B-1, then one forced row per target
        rows = torch.tensor([b for b in range(B) for _ in range(G)] + forced, device=device)
        past = select_rows(past, rows)
        logits = logits[:, -1, :][rows]  # [N + F, V]
        mask = mask[rows]
        N, F = B * G, len(forced)
        forced_codes = torch.tensor([list(targets[b] or ()) for b in forced], dtype=torch.long).reshape(
            F, vocab.L
        )
        codes = torch.zeros((N, vocab.L), dtype=torch.long)
        logps, forced_logps, entropy = [], [], 0.0
        for lvl in range(vocab.L):
            level_ids = vocab.level_ids[lvl].to(device)
            raw = logits[:, level_ids].float()  # [N + F, K_l]
            scores = raw[:N] / max(temperature, 1e-6)
            if constrained:
                scores = scores + vocab.trie_mask(codes, lvl).to(device)
            logp_all = torch.log_softmax(scores, dim=-1)
            if stats is not None:  # -sum p log p; 0 * -inf (a code the trie forbids) counts as 0
                p = logp_all.detach().exp()
                entropy += float(-(p * logp_all.detach().nan_to_num(neginf=0.0)).sum(-1).mean()) / vocab.L
            probs = (
                logp_all.detach().exp().cpu()
            )  # sampled on the CPU: a seeded CPU generator serves any device
            if uniforms is not None:
                pick = inverse_cdf(probs, uniforms[:, lvl])
            else:
                pick = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            codes[:, lvl] = pick
            pick_dev = pick.to(device)
            logps.append(logp_all.gather(1, pick_dev[:, None]).squeeze(1))
            if F:
                want = forced_codes[:, lvl].to(device)
                forced_logps.append(torch.log_softmax(raw[N:], dim=-1).gather(1, want[:, None]).squeeze(1))
            if lvl == vocab.L - 1:
                break  # the last token's forward pass would feed nothing
            next_ids = level_ids[torch.cat([pick_dev, forced_codes[:, lvl].to(device)])][
                :, None
            ]  # [N + F, 1]
            mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
            logits, past = cached_forward(model, next_ids, mask, _positions(mask)[:, -1:], past)
            logits = logits[:, -1, :]
        forced_logp = torch.stack(forced_logps, dim=1) if F else torch.zeros((0, vocab.L), device=device)
        if stats is not None:
            stats["entropy"] = entropy
        return codes, torch.stack(logps, dim=1), forced_logp


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row of `probs` [N, K] from its uniform `u` [N]: the first index whose cumulative
    probability exceeds u x the row's total. A zero-probability index (a code the trie forbids) is
    never picked: its cumulative value equals its predecessor's."""
    cdf = probs.double().cumsum(dim=1)
    value = (u.double() * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, value, right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, the same in sampling and in scoring."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def sequence_logp(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    vocab: SidVocab,
    codes: torch.Tensor,
    G: int,
    temperature: float = 1.0,
    constrained: bool = False,
) -> torch.Tensor:
    """Teacher-forced log-probs [B*G, L] of `codes` under the level-restricted distribution that
    `rollout` samples from (with `constrained`, renormalised over the trie's codes as a constrained
    rollout samples), with gradients when enabled: the `logp` of the losses, the reference's too."""
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    ids = enc["input_ids"].repeat_interleave(G, 0).to(device)  # [N, T]
    mask = enc["attention_mask"].repeat_interleave(G, 0).to(device)
    codes = codes.to(device)
    sid_ids = torch.stack([vocab.level_ids[lvl].to(device)[codes[:, lvl]] for lvl in range(vocab.L)], 1)
    full = torch.cat([ids, sid_ids], dim=1)  # [N, T + L]
    full_mask = torch.cat([mask, torch.ones_like(sid_ids)], dim=1)
    # use_cache=False: one pass over the whole sequence reads no cache, so none is built (at 0.5B it
    # was 0.28 MiB per rollout-token of transient on top of the live rollout graph, bench/learner_memory.py)
    out = model(input_ids=full, attention_mask=full_mask, position_ids=_positions(full_mask), use_cache=False)
    logits = out.logits
    T = ids.shape[1]
    out = []
    for lvl in range(vocab.L):
        step = logits[:, T - 1 + lvl, :][:, vocab.level_ids[lvl].to(device)].float() / temperature
        if constrained:
            step = step + vocab.trie_mask(codes, lvl)
        out.append(torch.log_softmax(step, dim=-1).gather(1, codes[:, lvl : lvl + 1]).squeeze(1))
    return torch.stack(out, dim=1)  # [N, L]
