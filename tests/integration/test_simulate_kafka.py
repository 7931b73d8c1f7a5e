"""`streamrl simulate --kafka`: events on the broker, keyed so a request's events share a partition."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from streamrl.configs import StreamrlConfig
from streamrl.stream import kafka_io

from .helpers import overrides

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_simulate_to_kafka_reports_rate_and_keys_by_request(kafka_cfg: StreamrlConfig) -> None:
    cmd = [
        sys.executable,
        "-m",
        "streamrl",
        "simulate",
        "--world",
        str(ROOT / "configs/world.yaml"),
        "--kafka",
        "--requests",
        "300",
        "--rate",
        "3000",
    ]
    for o in overrides(kafka_cfg):
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "events/s (asked 3000)" in proc.stderr
    t = kafka_cfg.kafka.topics
    partitions: dict[str, set[int]] = defaultdict(set)
    counts = defaultdict(int)
    for topic in (t.impressions, t.clicks, t.orders):
        for part, _, value in kafka_io.read_span(kafka_cfg.kafka, topic):
            ev = orjson.loads(value)
            partitions[ev["request_id"]].add(part)
            counts[ev["type"]] += 1
    items = sum(1 for _ in kafka_io.read_span(kafka_cfg.kafka, t.items))
    assert items == 3000 and counts["impression"] > 250 and counts["click"] > 0
    assert all(len(p) == 1 for p in partitions.values())  # the join's partitioning contract
