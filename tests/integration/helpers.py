"""Helpers for tests against the real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from streamrl.configs import JoinConfig, StreamrlConfig
from streamrl.stream import kafka_io
from streamrl.stream.replay import replay

# Short windows so the watermark moves within a test; disorder stays inside the lateness bound.
TEST_JOIN = [
    "join.window_s=20",
    "join.allowed_lateness_s=5",
    "join.orphan_ttl_s=10",
    "join.idle_finalize_s=3",
    "joiner.commit_interval_s=0.5",
    "archive.roll_s=1",
]


def overrides(cfg: StreamrlConfig) -> list[str]:
    k, t = cfg.kafka, cfg.kafka.topics
    return [
        f"kafka.bootstrap_servers={k.bootstrap_servers}",
        f"kafka.join_group={k.join_group}",
        f"kafka.learn_group={k.learn_group}",
        f"kafka.session_timeout_ms={k.session_timeout_ms}",
        f"kafka.heartbeat_interval_ms={k.heartbeat_interval_ms}",
        f"archive.dir={cfg.archive.dir}",
        *[
            f"metrics.{p}_port={getattr(cfg.metrics, p + '_port')}"
            for p in ("supervisor", "joiner", "learner")
        ],
        *[
            f"kafka.topics.{name}={getattr(t, name)}"
            for name in ("impressions", "clicks", "orders", "items", "rewards", "dlq")
        ],
    ]


def start_joiner(cfg: StreamrlConfig, log: Path, extra: list[str] = ()) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streamrl", "join"]
    for o in [*overrides(cfg), *TEST_JOIN, *extra]:
        cmd += ["--set", o]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stderr=fh, stdout=fh)


def produce(cfg: StreamrlConfig, lines: list[bytes]) -> None:
    producer = kafka_io.make_producer(cfg.kafka)
    kafka_io.produce_events(producer, cfg.kafka.topics, lines)
    producer.flush()
    producer.close()


def reference_records(lines: list[bytes], tmp: Path, join: JoinConfig) -> dict[str, dict]:
    """The same events through `streamrl replay` (file order): what an uninterrupted join gives."""
    path = tmp / "events.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    result = replay([path], tmp / "replay", join)
    return {r["request_id"]: r for f in result.record_files for r in pq.read_table(f).to_pylist()}


def read_all_records(
    cfg: StreamrlConfig, expect: int, timeout_s: float = 60.0, group: str = "reader"
) -> tuple[dict[str, dict], int]:
    """Everything on the rewards topic through the learner's reader; returns (records, duplicates)."""
    reader = kafka_io.RewardReader(cfg.kafka, f"{cfg.kafka.join_group}-{group}")
    got: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for rec in reader.poll(500):
                assert rec["request_id"] not in got, "the reader delivered a request twice"
                got[rec["request_id"]] = rec
        return got, reader.seen.duplicates
    finally:
        reader.close()


def flags(rec: dict) -> tuple[list, list, list]:
    items = rec["items"]
    return (
        [(i["item_id"], i["position"], i["rel_tier"]) for i in items],
        sorted(i["item_id"] for i in items if i["clicked"]),
        sorted(i["item_id"] for i in items if i["ordered"]),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, path: str = "/metrics", timeout_s: float = 30.0) -> str:
    """GET a local endpoint, retrying until the process has opened it."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
