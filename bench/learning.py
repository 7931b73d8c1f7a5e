"""Learning on the simulated world: held-out HR@10 / MRR@10 of untrained, sft, grpo and tpma after
the same number of steps (issue #4). Everything runs in-process from a fixed world seed.

    .venv/bin/python bench/learning.py [--steps 150] [--requests 3000] [--seed 0] [--eval 150]

Records: the world's events joined by `stream.replay`; the first 80 % train, the last 20 % are held
out. SIDs: hash encoder, levels 64,16,8 + 2x16. Prints one JSON line per model and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config
from rl.checkpointing import load_for_inference, resolve
from rl.encoders import HashEncoder
from rl.evaluate import evaluate
from rl.offline import load_records, run_offline
from rl.sid import SidCodebook, save_codebook
from sim.output import TruthWriter, to_file
from sim.simulate import Simulator
from sim.world import build_world, load_world_config
from stream.replay import replay


def prepare(tmp: Path, requests: int, seed: int) -> tuple[Path, Path, Path]:
    world = build_world(load_world_config(Path(__file__).resolve().parents[1] / "configs/world.yaml"))
    truth = TruthWriter(world, tmp / "truth")
    to_file(Simulator(world, seed), requests, tmp / "events.jsonl", truth)
    result = replay([tmp / "events.jsonl"], tmp / "joined", load_config().join)
    table = pq.read_table(result.record_files[0])
    cut = int(table.num_rows * 0.8)
    for name, part in (("train", table.slice(0, cut)), ("test", table.slice(cut))):
        (tmp / name).mkdir()
        pq.write_table(part, tmp / name / "records.parquet")
    from rl.catalog import read_catalog

    catalog = read_catalog(None, tmp / "truth")
    ids = sorted(catalog)
    book = SidCodebook((64, 16, 8), (2, 16)).build(
        ids, HashEncoder(256).encode([catalog[i].text() for i in ids]), seed
    )
    save_codebook(book, catalog, tmp / "sids", "hash-256")
    return tmp / "train", tmp / "test", tmp / "sids"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=150, help="held-out records evaluated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        train, test, sids = prepare(tmp, args.requests, args.seed)
        held_out = load_records(test)[: args.eval]
        rows = []
        for algo, steps in (
            ("untrained", 0),
            ("sft", args.steps),
            ("grpo", args.steps),
            ("tpma", args.steps),
        ):
            cfg = load_config(overrides=[f"learn.algo={'sft' if algo == 'untrained' else algo}"])
            out = tmp / algo
            summary = run_offline(cfg.learn, train, sids, steps, out, args.seed, log_every=10**9)
            model, tok, book, vocab = load_for_inference(resolve(out))
            result = evaluate(model, tok, book, vocab, held_out, k=10, beam=32)
            rows.append(
                {
                    "model": algo,
                    "steps": steps,
                    "seconds": round(summary["seconds"], 1),
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nseed {args.seed}, {args.requests} requests, {args.steps} steps, "
        f"{rows[0]['n']} held-out records with a click or order"
    )
    print(f"{'model':10} {'HR@10':>7} {'MRR@10':>7} {'valid':>6}")
    for r in rows:
        print(f"{r['model']:10} {r['hr@10']:7.3f} {r['mrr@10']:7.3f} {r['valid_sid_rate']:6.3f}")


if __name__ == "__main__":
    main()
