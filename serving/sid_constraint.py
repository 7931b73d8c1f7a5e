"""`SidConstraint`: make plain `model.generate` of a served version return real items.

A streamrl version folder is a standard transformers checkpoint (config.json, model.safetensors,
tokenizer files) plus its SID codebook. Unconstrained, a causal LM may write any token; this logits
processor allows, at the l-th generated token, only the level-l SID tokens that continue a real item's
SID (the codebook's prefix trie, as tensors: rl/trie.py), then only end-of-sequence. Any decoding
strategy of `generate` (beam search, sampling, greedy) then yields real SIDs; `items()` maps the
output back to item ids:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from streamrl.serving.sid_constraint import SidConstraint

    tok = AutoTokenizer.from_pretrained(version)
    model = AutoModelForCausalLM.from_pretrained(version)
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)     # rl.policy.format_prompt
    sid = SidConstraint.from_pretrained(version, tok, prompt_len=enc["input_ids"].shape[1])
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         logits_processor=[sid], max_new_tokens=sid.L, num_beams=10,
                         num_return_sequences=10, do_sample=False)
    sid.items(out)                                                          # item ids, best beam first

Works with transformers 4.45 through 5.x (tests/test_sid_constraint.py runs it under the oldest).
For vLLM, the same trie and `mask` serve a custom logits processor: see docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from streamrl.rl.policy import sid_token
from streamrl.rl.sid import level_sizes, load_codebook
from streamrl.rl.trie import SidTrie


class SidConstraint(LogitsProcessor):
    def __init__(
        self,
        level_token_ids: Sequence[Sequence[int]],
        sids: Sequence[Sequence[int]],
        items: Sequence[str],
        prompt_len: int,
        eos_token_id: int,
    ) -> None:
        self.L = len(level_token_ids)
        self.level_ids = [torch.tensor(ids, dtype=torch.long) for ids in level_token_ids]
        self.trie = SidTrie(sids, [len(ids) for ids in level_token_ids])
        self.by_sid = {tuple(int(c) for c in s): item for s, item in zip(sids, items, strict=True)}
        self.prompt_len = prompt_len
        self.eos = eos_token_id
        vocab = max(max(ids) for ids in level_token_ids) + 1
        self.code_of = torch.full((self.L, vocab), -1, dtype=torch.long)  # token id -> code per level
        for lvl, ids in enumerate(self.level_ids):
            self.code_of[lvl, ids] = torch.arange(len(ids))

    @classmethod
    def from_pretrained(cls, folder: str | Path, tokenizer: Any, prompt_len: int) -> SidConstraint:
        """From a streamrl checkpoint or served version folder and its tokenizer; `prompt_len` is the
        (padded) length of the prompts `generate` is given."""
        book, _ = load_codebook(Path(folder))
        sizes = level_sizes(book)
        ids = [
            tokenizer.convert_tokens_to_ids([sid_token(lvl, c) for c in range(n)])
            for lvl, n in enumerate(sizes)
        ]
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        return cls(ids, list(book.sids.values()), list(book.sids), prompt_len, int(eos))

    def codes(self, generated: torch.Tensor) -> torch.Tensor:
        """[R, n] generated token ids → [R, n] SID codes (-1 where a token is not that level's)."""
        out = torch.full(generated.shape, -1, dtype=torch.long)
        for lvl in range(min(generated.shape[1], self.L)):
            col = generated[:, lvl].cpu()
            ok = col < self.code_of.shape[1]
            out[ok, lvl] = self.code_of[lvl, col[ok]]
        return out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        allowed = torch.full_like(scores, float("-inf"))
        if step >= self.L or step < 0:
            allowed[:, self.eos] = 0.0
            return scores + allowed  # type: ignore[return-value]
        nodes = self.trie.walk(self.codes(input_ids[:, self.prompt_len :]), step)
        level = self.level_ids[step].to(scores.device)
        allowed[:, level] = self.trie.mask(step, nodes).to(scores.device)
        return scores + allowed  # type: ignore[return-value]

    def items(self, sequences: torch.Tensor) -> list[str | None]:
        """The item id each output sequence names (None for one that is not a real SID)."""
        codes = self.codes(sequences[:, self.prompt_len : self.prompt_len + self.L])
        return [self.by_sid.get(tuple(row)) for row in codes.tolist()]
