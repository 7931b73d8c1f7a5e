"""The streaming learner on the real broker: reads the rewards topic, steps, checkpoints, commits;
SIGTERM finishes the step, saves and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny_world import TINY_LEARN, build_tiny_world
from transformers import AutoModelForCausalLM

from checkpoints.store import CheckpointStore, verify
from configs import StreamrlConfig
from stream import kafka_io

from .helpers import overrides

pytestmark = pytest.mark.integration
TINY = [*TINY_LEARN, "checkpoint.every_steps=2", "checkpoint.every_s=null", "push.enabled=false"]


@pytest.fixture
def world_on_topic(kafka_cfg: StreamrlConfig, tmp_path: Path) -> Path:
    """A tiny simulated world: its records on the rewards topic, its SIDs in tmp_path / sids."""
    build_tiny_world(tmp_path)
    t = kafka_cfg.kafka.topics
    kafka_io.ensure_topics(kafka_cfg.kafka, [t.rewards])
    producer = kafka_io.make_producer(kafka_cfg.kafka)
    table = pq.read_table(tmp_path / "rec" / "records-00000.parquet")
    for i in range(0, table.num_rows, 50):
        kafka_io.send_records(producer, t.rewards, 0, table.slice(i, 50))
    producer.flush()
    producer.close()
    return tmp_path


def _learn(cfg: StreamrlConfig, tmp: Path, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "streamrl",
        "learn",
        "--sids",
        str(tmp / "sids"),
        "--out",
        str(tmp / "run"),
        *extra,
        "--set",
        f"serving.root={tmp / 'serving'}",
        "--set",
        f"weights.dir={tmp / 'weights'}",
    ]
    for o in [*overrides(cfg), *TINY]:
        cmd += ["--set", o]
    return cmd


def test_streaming_learner_steps_checkpoints_and_commits(
    kafka_cfg: StreamrlConfig, world_on_topic: Path
) -> None:
    tmp = world_on_topic
    proc = subprocess.run(_learn(kafka_cfg, tmp, "--steps", "3"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["buffer"] >= 4 for s in steps)
    store = CheckpointStore(tmp / "run")
    assert [c.step for c in store.checkpoints()] == [2, 3]  # every 2 steps, and at the end
    manifest = verify(store.path(3))
    assert manifest["weights_version"] == 0 and manifest["parent"] == 2
    assert sum(manifest["offsets"][kafka_cfg.kafka.topics.rewards].values()) > 0
    model = AutoModelForCausalLM.from_pretrained(str(store.path(3)), local_files_only=True)
    assert model is not None
    # offsets were committed after the checkpoint: the group has a position on the rewards topic
    consumer = kafka_io.make_consumer(kafka_cfg.kafka, kafka_cfg.kafka.learn_group)
    tp = kafka_io.TopicPartition(kafka_cfg.kafka.topics.rewards, 0)
    assert (consumer.committed(tp) or 0) > 0
    consumer.close()


def test_sigterm_saves_and_exits_zero(kafka_cfg: StreamrlConfig, world_on_topic: Path) -> None:
    tmp = world_on_topic
    proc = subprocess.Popen(
        _learn(kafka_cfg, tmp), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first step's metrics
    assert json.loads(first)["step"] == 1
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - start < 30
    latest = CheckpointStore(tmp / "run").latest_valid()
    assert latest is not None and latest[0].step >= 1
