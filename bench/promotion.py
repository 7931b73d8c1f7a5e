"""A promotion on a merchant set (paper §4.4: emerging merchants get +1 relevance during a festival):
that set's share of the top-10 results, trained with the promotion active, expired, and absent.

    .venv/bin/python bench/promotion.py [--steps 150] [--requests 3000] [--seed 0] [--bonus 1.0]

The world's new merchants are the set. Three tpma runs from the same seed and the same records:
no promotion (version 0 weights), the promotion active over the records' whole event-time span, and
the same promotion with a window that ended before the first record (must match no promotion).
Share = fraction of the top-10 constrained beam results, over held-out requests, sold by the set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.learning import prepare
from streamrl.configs import load_config
from streamrl.rewards.weights import RewardPolicy, parse_rewards
from streamrl.rl.checkpointing import load_for_inference, resolve
from streamrl.rl.decode import beam_search
from streamrl.rl.offline import load_records, run_offline
from streamrl.rl.policy import format_prompt


def rewards_file(merchants: list[str], start: str, end: str, bonus: float) -> str:
    return json.dumps(
        {
            "promotions": [
                {
                    "name": "emerging-merchants-festival",
                    "match": {"merchant_ids": merchants},
                    "bonus": {"relevance": bonus},
                    "start": start,
                    "end": end,
                }
            ]
        }
    )  # JSON is YAML


def share(folder: Path, held_out: list[dict], merchant_of: dict[str, str], promoted: set[str]) -> float:
    model, tok, book, vocab = load_for_inference(resolve(folder))
    by_sid = {sid: item for item, sid in book.sids.items()}
    prompts = [
        format_prompt(rec["query"], [book.sids[h] for h in rec["history"][:5] if h in book.sids], tok)
        for rec in held_out
    ]
    hits = total = 0
    for start in range(0, len(prompts), 16):
        for beams in beam_search(model, tok, prompts[start : start + 16], vocab, 16):
            top = beams[:10]
            hits += sum(merchant_of.get(by_sid[s], "") in promoted for s, _ in top)
            total += len(top)
    return hits / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bonus", type=float, default=1.0)
    ap.add_argument("--eval", type=int, default=100, help="held-out requests ranked")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = Path(__file__).resolve().parents[1] / "configs" / "world.yaml"
        data = prepare(tmp, world, args.requests, args.seed)
        train, test, sids = data["train"], data["test"], data["sids"]
        catalog = [orjson.loads(x) for x in (tmp / "truth" / "catalog.jsonl").read_bytes().splitlines()]
        merchant_of = {c["item_id"]: c["merchant_id"] for c in catalog}
        promoted = sorted({c["merchant_id"] for c in catalog if c["new_merchant"]})
        catalog_share = sum(c["merchant_id"] in promoted for c in catalog) / len(catalog)
        held_out = load_records(test)[: args.eval]
        cfg = load_config(overrides=["learn.algo=tpma", "learn.beta=0"]).learn  # from scratch: no anchor
        runs = {
            "no promotion": None,
            "promotion active": rewards_file(
                promoted, "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z", args.bonus
            ),
            "promotion expired": rewards_file(
                promoted, "2000-01-01T00:00:00Z", "2000-01-02T00:00:00Z", args.bonus
            ),
        }
        rows = []
        for name, text in runs.items():
            policy = RewardPolicy(parse_rewards(text), 1) if text else None
            out = tmp / name.replace(" ", "-")
            run_offline(cfg, train, sids, args.steps, out, args.seed, log_every=10**9, policy=policy)
            rows.append(
                {"run": name, "top10_share": round(share(out, held_out, merchant_of, set(promoted)), 4)}
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nseed {args.seed}, {args.requests} requests, {args.steps} tpma steps, "
        f"bonus relevance +{args.bonus}, {len(promoted)} new merchants selling {catalog_share:.1%} "
        f"of the catalog, {len(held_out)} held-out requests"
    )
    for r in rows:
        print(f"{r['run']:18} share of top-10 from the promoted merchants: {r['top10_share']:.3f}")


if __name__ == "__main__":
    main()
