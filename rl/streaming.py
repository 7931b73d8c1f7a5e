"""`streamrl learn --sids DIR --out RUN_DIR` without `--records`: the learner on the live rewards topic.

setup → loop → shutdown. The loop reads records through `RewardReader` (each request once) into a
bounded buffer of recent records (at most `learn.buffer_size`, none older than `buffer_max_age_s` of
event time behind the newest), samples B prompts once the buffer holds B, takes one step and logs
its metrics as a JSON line. Every `checkpoint_every_steps` it writes the checkpoint, then commits the
reader's offsets (offsets never run ahead of saved training). SIGTERM finishes the step, saves,
commits and exits 0. Resuming a run from its checkpoint is the checkpoint store's job (issue #5);
until then a restart continues from the committed offsets with a fresh model.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import deque
from pathlib import Path
from typing import Any

from configs.schema import StreamrlConfig
from rl.learner import Learner
from rl.offline import new_learner, save_checkpoint
from stream.kafka_io import RewardReader

log = logging.getLogger("streamrl.learner")


def run_streaming(
    cfg: StreamrlConfig,
    sids_dir: Path,
    out: Path,
    stop: threading.Event,
    max_steps: int | None = None,
    seed: int = 0,
) -> int:
    lc = cfg.learn
    learner, _ = new_learner(lc, sids_dir, seed)
    model, tok = learner.model, learner.tok
    reader = RewardReader(cfg.kafka, cfg.kafka.learn_group)
    buffer: deque[dict[str, Any]] = deque(maxlen=lc.buffer_size)
    rng = random.Random(seed)
    newest = 0
    try:
        while not stop.is_set() and (max_steps is None or learner.steps < max_steps):
            records = reader.poll(200)
            learner.observe(records)
            buffer.extend(r for r in records if learner.usable(r))
            newest = max([newest, *(r["ts_ms"] for r in records)])
            while buffer and buffer[0]["ts_ms"] < newest - lc.buffer_max_age_s * 1000:
                buffer.popleft()
            if len(buffer) < lc.batch_prompts:
                continue
            stats = learner.step(learner.make_batch(rng.sample(list(buffer), lc.batch_prompts)))
            print(
                json.dumps(
                    {
                        "step": learner.steps,
                        "skipped_total": learner.skipped,
                        "buffer": len(buffer),
                        **stats.values,
                    }
                ),
                flush=True,
            )
            if learner.steps % lc.checkpoint_every_steps == 0:
                _save(model, tok, sids_dir, out, learner, reader)
    finally:
        _save(model, tok, sids_dir, out, learner, reader)
        reader.close()
    return 0


def _save(model: Any, tok: Any, sids_dir: Path, out: Path, learner: Learner, reader: RewardReader) -> None:
    """1. write the checkpoint (temp folder → rename); 2. then commit what it has learned from."""
    save_checkpoint(
        model,
        tok,
        sids_dir,
        out / "latest",
        {"summary": {"steps": learner.steps, "skipped": learner.skipped}},
    )
    reader.commit()
    log.info("checkpoint at step %d in %s", learner.steps, out / "latest")
