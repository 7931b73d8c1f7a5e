"""The push gate's model evaluation: held-out HR@10 of a checkpoint or served version folder, on the
records the streaming learner kept aside (RUN_DIR/heldout.parquet, never trained on)."""

from __future__ import annotations

from pathlib import Path

from streamrl.checkpoints.push import Evaluate, HeldoutScores
from streamrl.configs.schema import LearnConfig
from streamrl.rl.checkpointing import load_for_inference
from streamrl.rl.evaluate import evaluate
from streamrl.stream.records import read_records


def heldout_evaluator(heldout: Path, limit: int, beam: int, cfg: LearnConfig) -> Evaluate:
    """`evaluate(folder) -> {"hr@10", "distinct_top1_share", "n", "queries", "hits"}`, or None while
    there are no held-out records. The records are read once per push, so the candidate and the served
    version are measured on the same ones, and `hits` (0/1 per evaluated request, in record order) pair
    request by request for the gate's McNemar test."""
    records = list(read_records([heldout]))[-limit:] if heldout.exists() else []

    def run(folder: Path) -> HeldoutScores | None:
        if not records:
            return None
        model, tok, book, vocab = load_for_inference(folder)
        result = evaluate(
            model, tok, book, vocab, records, k=10, beam=beam, history_len=cfg.history_len, free_samples=0
        )
        return {
            "hr@10": float(result["hr@10"]),
            "distinct_top1_share": float(result["distinct_top1_share"]),
            "n": float(result["n"]),
            "queries": float(result["queries"]),
            "hits": [int(h) for h in result["hits"]],
        }

    return run
