"""`streamrl learn --records DIR --sids DIR --steps N --out RUN_DIR`: the learner on Parquet records
(written by `streamrl replay`), ending in a checkpoint in the store: RUN_DIR/checkpoints/<step>/ —
HF format (AutoModelForCausalLM loads it), its tokenizer, the SID codebook, optimizer and learner
state, and a manifest (checkpoints/store.py). `streamrl push --run-dir RUN_DIR` can push it.

The final model is also exported to RUN_DIR itself (config, safetensors, tokenizer, codebook; each
file replaced atomically), so `AutoModelForCausalLM.from_pretrained(RUN_DIR)` and
`streamrl eval --checkpoint RUN_DIR` load the result of an offline run directly."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from streamrl.checkpoints.store import LEARNER_ONLY, MANIFEST, CheckpointStore
from streamrl.configs.schema import JoinConfig, LearnConfig
from streamrl.rewards.weights import RewardPolicy
from streamrl.rl import distributed
from streamrl.rl.checkpointing import level_sizes, new_learner, resolve, save
from streamrl.rl.curves import Curves
from streamrl.rl.learner import pick_device
from streamrl.stream.records import read_records

__all__ = ["level_sizes", "load_records", "run_offline"]
NOT_EXPORTED = LEARNER_ONLY | {MANIFEST}  # training state stays in the store


def load_records(folder: Path) -> list[dict[str, Any]]:
    return list(read_records(sorted(folder.glob("*.parquet"))))


def run_offline(
    cfg: LearnConfig,
    records_dir: Path,
    sids_dir: Path,
    steps: int,
    out: Path,
    seed: int = 0,
    log_every: int = 10,
    policy: RewardPolicy | None = None,
    join: JoinConfig | None = None,
) -> dict[str, Any]:
    """`steps` steps of `cfg.algo` on the records, from a fresh policy or `cfg.init_from` (a
    checkpoint or run folder of the same codebook); v_click, v_order and the CTR prior from `join`."""
    random.seed(seed)
    init = resolve(Path(cfg.init_from)) if cfg.init_from else None
    d = distributed.from_env(pick_device(cfg.device))  # under torchrun: this rank's share of each batch
    try:
        return _offline(cfg, records_dir, sids_dir, steps, out, seed, log_every, policy, join, init, d)
    finally:
        distributed.close(d)


def _offline(
    cfg: LearnConfig,
    records_dir: Path,
    sids_dir: Path,
    steps: int,
    out: Path,
    seed: int,
    log_every: int,
    policy: RewardPolicy | None,
    join: JoinConfig | None,
    init: Path | None,
    d: distributed.Dist,
) -> dict[str, Any]:
    if cfg.batch_prompts % d.world:
        raise ValueError(f"learn.batch_prompts={cfg.batch_prompts} does not divide into {d.world} ranks")
    learner = new_learner(cfg, sids_dir, seed, init_from=init, policy=policy, join=join)
    learner.dist = d
    distributed.sync_parameters(d, learner.model)
    records = load_records(records_dir)
    learner.observe(records)
    prompts = [r for r in records if learner.usable(r)]
    if not prompts:
        raise ValueError(f"no usable records in {records_dir} (learn.prompts={cfg.prompts})")
    rng = random.Random(seed)
    history: list[dict[str, float]] = []
    start = time.monotonic()
    last: dict[str, float] = {}
    curves = Curves(out, cfg.tensorboard and d.leader)
    for step in range(1, steps + 1):
        stats = learner.step(learner.make_batch(rng.sample(prompts, min(cfg.batch_prompts, len(prompts)))))
        last = stats.values
        curves.scalars("train", {**stats.values, "skipped": stats.skipped}, learner.steps)
        if step % log_every == 0 or step == steps:
            history.append({"step": step, **stats.values, "skipped": float(stats.skipped)})
            if d.leader:
                print(json.dumps(history[-1]), flush=True)
    summary: dict[str, Any] = {
        "steps": learner.steps,
        "skipped": learner.skipped,
        "seconds": time.monotonic() - start,
        "algo": cfg.algo,
        "seed": seed,
        "records": len(records),
        "prompts": len(prompts),
        "weights_version": learner.policy.version,
        "init_from": str(init) if init else None,
        "last": last,
        "tensorboard": str(curves.path) if curves.path else None,
    }
    curves.close()
    if not d.leader:  # rank 0 saves and exports the one model every rank holds
        return summary
    path = save(CheckpointStore(out), learner, metrics=last, extra={"summary": summary, "history": history})
    export(path, out)
    summary["checkpoint"] = str(path)
    return summary


def export(checkpoint: Path, out: Path) -> None:
    """The checkpoint's inference files into `out` (temp copy, then one atomic replace per file)."""
    tmp = out / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [p.name for p in checkpoint.iterdir() if p.is_file() and p.name not in NOT_EXPORTED]
    for name in names:
        shutil.copy2(checkpoint / name, tmp / name)
    for name in names:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
