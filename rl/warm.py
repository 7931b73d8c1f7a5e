"""The warm start (`learn.warm_start`): SFT on logged reward records before RL, as the paper trains
SFT first and then RL anchored to it.

1. the records: a folder of Parquet reward records, or the rewards topic's last `lookback_s`
   seconds (read with manual assignment: no group, nothing committed; the live reader reads them
   again later, as any restart would);
2. held-out requests (by the hash the streaming learner uses) are kept aside for the push gate and
   never trained on; the rest feed the CTR table;
3. `steps` SFT steps of B prompts at `warm_start.lr`, with a progress line every tenth;
4. a fresh optimizer for RL at `learn.lr`; the KL reference (learn.beta > 0) is the SFT model.
The caller saves the checkpoint and pushes it through the gate before RL takes a step.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrl.configs.schema import KafkaConfig, WarmStartConfig
from streamrl.rl.checkpointing import InitError
from streamrl.rl.learner import Learner
from streamrl.stream.records import read_records

log = logging.getLogger("streamrl.learner")
Record = dict[str, Any]


def warm_records(wc: WarmStartConfig, kcfg: KafkaConfig) -> list[Record]:
    """Step 1: the records the warm start learns from, oldest first."""
    if wc.records:
        files = sorted(Path(wc.records).glob("*.parquet"))
        if not files:
            raise InitError(f"learn.warm_start.records {wc.records}: no Parquet files there")
        return list(read_records(files))
    from streamrl.stream.kafka_io import read_span
    from streamrl.stream.records import decode_or_skip

    assert wc.lookback_s is not None
    since = int((time.time() - wc.lookback_s) * 1000)
    seen: set[str] = set()
    out: list[Record] = []
    for part, offset, value in read_span(kcfg, kcfg.topics.rewards, since):
        table = decode_or_skip(value, "warm-start look-back", (part, offset))
        for rec in table.to_pylist() if table is not None else ():
            if rec["request_id"] not in seen:  # the first copy of a request wins, as RewardReader
                seen.add(rec["request_id"])
                out.append(rec)
    return sorted(out, key=lambda r: r["ts_ms"])


def run_warm_start(
    learner: Learner,
    train: list[Record],
    wc: WarmStartConfig,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any] | None:
    """Steps 3–4 on the training records (held-out ones already removed); returns a summary, or
    None when `stop` was set before the last step (checked after every step)."""
    learner.observe(train)
    prompts = [r for r in train if learner.usable(r)]
    if not prompts:
        raise InitError(f"warm start: none of {len(train)} records has a click or an order to learn from")
    B = learner.cfg.batch_prompts
    rng = random.Random(seed)
    learner.reset_optimizer(wc.lr)
    start, loss = time.monotonic(), float("nan")
    every = max(wc.steps // 10, 1)
    for step in range(1, wc.steps + 1):
        if stop is not None and stop.is_set():
            return None
        stats = learner.step(learner.make_batch(rng.sample(prompts, min(B, len(prompts)))), sft=True)
        loss = stats.values.get("loss", loss)
        if progress:  # every step: /healthz's heartbeat and the curves
            progress(step, wc.steps, loss)
        if (step % every == 0 or step == wc.steps) and learner.dist.leader:
            line = {"warm_start_step": step, "of": wc.steps, "loss": round(loss, 4)}
            print(json.dumps(line), flush=True)
    learner.reset_optimizer()
    if learner.cfg.beta > 0 and learner.cfg.algo != "sft":
        learner.anchor()
    summary = {
        "records": len(train),
        "prompts": len(prompts),
        "steps": wc.steps,
        "loss": loss,
        "seconds": round(time.monotonic() - start, 1),
    }
    log.info("warm start done: %s", json.dumps(summary))
    return summary
