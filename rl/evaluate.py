"""Offline evaluation: beam search constrained to real SIDs, HR@K and MRR@K against the clicked ∪
ordered items of held-out records (also split by click and order targets, and per target item as
the paper's tables count), distinct top-1 SIDs over the prompts and as a share of the distinct
queries among them (a collapsed policy names the same few items for every query), and the valid-SID
rate of free (unconstrained, level-restricted) sampling. Records are decoded `batch` prompts at a time
by the batched KV-cached decoder (rl/decode.py), the one serving uses.

Only records with a click or an order are evaluated. `hits` lists, per evaluated record in record
order, 1 when a clicked or ordered item is in the top K (its mean is HR@K), so two models evaluated on
the same records can be compared request by request (the push gate's paired test, checkpoints/push.py)."""

from __future__ import annotations

from typing import Any

import torch

from streamrl.rl.decode import beam_search
from streamrl.rl.policy import SidVocab, format_prompt, rollout


def evaluate(
    model: Any,
    tok: Any,
    book: Any,
    vocab: SidVocab,
    records: list[dict[str, Any]],
    k: int = 10,
    beam: int = 32,
    history_len: int = 5,
    free_samples: int = 8,
    seed: int = 0,
    batch: int = 16,
) -> dict[str, Any]:
    model.eval()
    by_sid = {sid: item for item, sid in book.sids.items()}
    sums = {"hr": 0.0, "mrr": 0.0, "hr_click": 0.0, "mrr_click": 0.0, "hr_order": 0.0, "mrr_order": 0.0}
    n = n_click = n_order = 0
    valid = total = 0
    top1: set[tuple[int, ...]] = set()
    queries: set[str] = set()
    pt_n, pt_hr, pt_mrr = 0, 0.0, 0.0  # per target item
    hits: list[int] = []  # per evaluated record, in record order: 1 if a target is in the top k
    gen = torch.Generator().manual_seed(seed)
    todo = []
    for rec in records:
        clicked = {i["item_id"] for i in rec["items"] if i["clicked"]}
        ordered = {i["item_id"] for i in rec["items"] if i["ordered"]}
        if clicked | ordered:
            history = [book.sids[h] for h in rec["history"][:history_len] if h in book.sids]
            todo.append((format_prompt(rec["query"], history, tok), rec["query"], clicked, ordered))
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        prompts = [p for p, _, _, _ in chunk]
        for (_, query, clicked, ordered), beams in zip(
            chunk, beam_search(model, tok, prompts, vocab, max(beam, k)), strict=True
        ):
            queries.add(query)
            if beams:
                top1.add(beams[0][0])
            ranked = [by_sid[s] for s, _ in beams][:k]
            hits.append(int(not (clicked | ordered).isdisjoint(ranked)))
            for target in clicked | ordered:
                rank = ranked.index(target) + 1 if target in ranked else None
                pt_n += 1
                pt_hr += rank is not None
                pt_mrr += 1.0 / rank if rank else 0.0
            for name, targets in (("", clicked | ordered), ("_click", clicked), ("_order", ordered)):
                if not targets:
                    continue
                rank = next((r for r, item in enumerate(ranked, start=1) if item in targets), None)
                sums["hr" + name] += rank is not None
                sums["mrr" + name] += 1.0 / rank if rank else 0.0
            n += 1
            n_click += bool(clicked)
            n_order += bool(ordered)
        if free_samples:
            codes, _ = rollout(model, tok, prompts, vocab, free_samples, generator=gen)
            valid += sum(tuple(c) in vocab.items for c in codes.tolist())
            total += len(codes)
    return {
        f"hr@{k}": sums["hr"] / max(n, 1),
        f"mrr@{k}": sums["mrr"] / max(n, 1),
        f"hr@{k}_click": sums["hr_click"] / max(n_click, 1),
        f"mrr@{k}_click": sums["mrr_click"] / max(n_click, 1),
        f"hr@{k}_order": sums["hr_order"] / max(n_order, 1),
        f"mrr@{k}_order": sums["mrr_order"] / max(n_order, 1),
        f"hr@{k}_per_target": pt_hr / max(pt_n, 1),
        f"mrr@{k}_per_target": pt_mrr / max(pt_n, 1),
        "distinct_top1": len(top1),
        "distinct_top1_share": len(top1) / max(len(queries), 1),  # per distinct query evaluated
        "queries": len(queries),
        "valid_sid_rate": valid / max(total, 1),
        "n": n,
        "n_click": n_click,
        "n_order": n_order,
        "hits": hits,
    }
