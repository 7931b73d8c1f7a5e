"""Issue #14, row "a streaming learner restarted from a checkpoint that was never pushed": it used to
read its codebook from that checkpoint's folder, which retention then deleted (FileNotFoundError).
Now the codebook lives with the run (RUN_DIR/codebook/<sha>/): restart from an unpushed checkpoint,
run through several retention cycles that delete it, and nothing breaks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from integration.test_learner_stream import _learn
from tiny_world import build_tiny_world

from streamrl.checkpoints.files import sha256_file
from streamrl.checkpoints.store import CheckpointStore, verify
from streamrl.configs import StreamrlConfig
from streamrl.stream import kafka_io

pytestmark = pytest.mark.integration


def test_restart_from_an_unpushed_checkpoint_survives_retention(
    kafka_cfg: StreamrlConfig, tmp_path: Path
) -> None:
    build_tiny_world(tmp_path)
    topic = kafka_cfg.kafka.topics.rewards
    kafka_io.ensure_topics(kafka_cfg.kafka, [topic])
    table = pq.read_table(tmp_path / "rec" / "records-00000.parquet")
    half = table.num_rows // 2

    def send(part: object) -> None:
        producer = kafka_io.make_producer(kafka_cfg.kafka)
        for i in range(0, part.num_rows, 50):  # type: ignore[attr-defined]
            kafka_io.send_records(producer, topic, 0, part.slice(i, 50))  # type: ignore[attr-defined]
        producer.flush()
        producer.close()

    send(table.slice(0, half))
    first = subprocess.run(
        _learn(kafka_cfg, tmp_path, "--steps", "3"), capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-3000:]
    store = CheckpointStore(tmp_path / "run")
    assert [c.step for c in store.checkpoints()] == [2, 3]  # never pushed (push.enabled=false)

    send(table.slice(half))
    second = subprocess.run(
        _learn(kafka_cfg, tmp_path, "--steps", "10", "--set", "checkpoint.keep_last=1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "FileNotFoundError" not in second.stderr
    steps = [json.loads(x)["step"] for x in second.stdout.splitlines() if x.startswith("{")]
    assert steps[0] == 4 and steps[-1] == 13  # resumed from 3, then 10 steps
    kept = [c.step for c in store.checkpoints()]
    assert 3 not in kept and kept[-1] == 13  # the checkpoint it resumed from is gone (several cycles)
    homes = list((tmp_path / "run" / "codebook").iterdir())
    assert len(homes) == 1
    codebook = sha256_file(tmp_path / "sids" / "sid_codebook.parquet")
    assert sha256_file(homes[0] / "sid_codebook.parquet") == codebook
    assert verify(store.path(13))["codebook_sha256"] == codebook  # still the same codebook
