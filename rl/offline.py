"""`streamrl learn --records DIR --sids DIR --steps N --out RUN_DIR`: the learner on Parquet records
(written by `streamrl replay`), ending in an HF-format checkpoint (AutoModelForCausalLM loads it),
its tokenizer and the SID codebook, written to a temp folder and renamed into place."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from configs.schema import LearnConfig
from rl.learner import Learner
from rl.policy import PolicyShape, build_model, build_tokenizer, load_pretrained
from rl.sid import CENTROIDS_FILE, CODEBOOK_FILE, META_FILE, load_codebook
from stream.records import read_records


def load_records(folder: Path) -> list[dict[str, Any]]:
    return list(read_records(sorted(folder.glob("*.parquet"))))


def level_sizes(book: Any) -> list[int]:
    return [*book.levels, *([book.unique[1]] * book.unique[0])]


def new_learner(cfg: LearnConfig, sids_dir: Path, seed: int) -> tuple[Learner, dict[str, Any]]:
    """A learner with a fresh policy over the codebook in `sids_dir` (offline and streaming)."""
    torch.manual_seed(seed)
    book, meta = load_codebook(sids_dir)
    categories = {
        r["item_id"]: tuple(r["category"]) for r in pq.read_table(sids_dir / CODEBOOK_FILE).to_pylist()
    }
    m = cfg.model
    if m.pretrained_path:
        model, tok = load_pretrained(m.pretrained_path, level_sizes(book))
    else:
        tok = build_tokenizer(level_sizes(book))
        model = build_model(tok, PolicyShape(m.hidden, m.layers, m.heads, m.intermediate), seed)
    return Learner(cfg, model, tok, book, categories, seed), meta


def run_offline(
    cfg: LearnConfig,
    records_dir: Path,
    sids_dir: Path,
    steps: int,
    out: Path,
    seed: int = 0,
    log_every: int = 10,
) -> dict[str, Any]:
    random.seed(seed)
    learner, meta = new_learner(cfg, sids_dir, seed)
    model, tok = learner.model, learner.tok
    records = load_records(records_dir)
    learner.observe(records)
    prompts = [r for r in records if learner.usable(r)]
    if not prompts:
        raise ValueError(f"no usable records in {records_dir} (learn.prompts={cfg.prompts})")
    rng = random.Random(seed)
    history: list[dict[str, float]] = []
    start = time.monotonic()
    for step in range(1, steps + 1):
        stats = learner.step(learner.make_batch(rng.sample(prompts, min(cfg.batch_prompts, len(prompts)))))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, **stats.values, "skipped": float(stats.skipped)})
            print(json.dumps(history[-1]), flush=True)
    summary = {
        "steps": learner.steps,
        "skipped": learner.skipped,
        "seconds": time.monotonic() - start,
        "algo": cfg.algo,
        "seed": seed,
        "records": len(records),
        "prompts": len(prompts),
    }
    save_checkpoint(model, tok, sids_dir, out, {"summary": summary, "history": history, "sid_meta": meta})
    return summary


def save_checkpoint(model: Any, tok: Any, sids_dir: Path, out: Path, info: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # config.json + model.safetensors
    tok.save_pretrained(tmp)
    for name in (CODEBOOK_FILE, CENTROIDS_FILE, META_FILE):
        shutil.copy2(sids_dir / name, tmp / name)
    (tmp / "learner.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
