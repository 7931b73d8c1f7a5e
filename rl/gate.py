"""The push gate's model evaluation: held-out HR@10 of a checkpoint or served version folder, on the
records the streaming learner kept aside (RUN_DIR/heldout.parquet, never trained on)."""

from __future__ import annotations

from pathlib import Path

from streamrl.checkpoints.push import Evaluate
from streamrl.configs.schema import LearnConfig
from streamrl.rl.checkpointing import load_for_inference
from streamrl.rl.evaluate import evaluate
from streamrl.stream.records import read_records


def heldout_evaluator(heldout: Path, limit: int, beam: int, cfg: LearnConfig) -> Evaluate:
    """`evaluate(folder) -> {"hr@10", "distinct_top1_share", "n", "queries"}`, or None while there are no
    held-out records. The records are read once per push, so the candidate and the served version are
    measured on the same ones."""
    records = list(read_records([heldout]))[-limit:] if heldout.exists() else []

    def run(folder: Path) -> dict[str, float] | None:
        if not records:
            return None
        model, tok, book, vocab = load_for_inference(folder)
        result = evaluate(
            model, tok, book, vocab, records, k=10, beam=beam, history_len=cfg.history_len, free_samples=0
        )
        return {k: float(result[k]) for k in ("hr@10", "distinct_top1_share", "n", "queries")}

    return run
