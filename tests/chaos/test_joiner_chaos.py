"""Issue #14's event rows on the live joiner and the real broker: hostile events in the input topics and
garbage on the rewards topic. Nothing crashes, every bad event is dead-lettered with its reason, and
the records are exactly those of the clean stream. Also (unit, no broker): a message that keeps
raising is dead-lettered after joiner.poison_tries, and a failed joiner commits nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from integration.helpers import (
    TEST_JOIN,
    flags,
    overrides,
    produce,
    read_all_records,
    reference_records,
    start_joiner,
)

from streamrl.configs import StreamrlConfig, load_config
from streamrl.stream import kafka_io
from streamrl.stream.joiner import Joiner
from streamrl.stream.records import SKIPPED_BATCHES

from .hostile import clean, hostile, mixed


@pytest.mark.integration
def test_live_joiner_dead_letters_every_hostile_event_and_keeps_the_records(
    kafka_cfg: StreamrlConfig, tmp_path: Path
) -> None:
    cfg = load_config(overrides=[*overrides(kafka_cfg), *TEST_JOIN])
    t = cfg.kafka.topics
    kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items, t.rewards, t.dlq])
    producer = kafka_io.make_producer(cfg.kafka)
    producer.send(t.rewards, value=b"not an arrow batch", partition=0)  # garbage the recovery must skip
    producer.flush()
    producer.close()
    lines = clean()
    bad = hostile(lines, query_bytes=100_000, big=5, now_ms=int(time.time() * 1000))
    want = reference_records(lines, tmp_path, cfg.join)
    produce(cfg, mixed(lines, bad))
    proc = start_joiner(cfg, tmp_path / "joiner.log")
    try:
        got, dups = read_all_records(cfg, expect=len(want), timeout_s=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    log = (tmp_path / "joiner.log").read_text()
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert "skipped a rewards message" in log  # the garbage, counted and logged by the joiner's recovery
    assert SKIPPED_BATCHES["learner"] >= 1  # and by the learner's reader, which read_all_records uses
    assert {r: flags(x) for r, x in got.items()} == {r: flags(x) for r, x in want.items()} and dups == 0
    dead = [orjson.loads(v) for _, _, v in kafka_io.read_span(cfg.kafka, t.dlq)]
    for reason, events in bad.items():
        assert sum(reason in d["reason"] for d in dead) == len(events), reason


class _Consumer:
    def __init__(self) -> None:
        self.commits = 0
        self.closed = False

    def commit(self, offsets: Any) -> None:
        self.commits += 1

    def close(self, autocommit: bool = False) -> None:
        self.closed = True

    def assignment(self) -> list[Any]:
        return []


class _Producer:
    def close(self, timeout: float = 0) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_poison_message_is_dead_lettered_after_its_tries_and_a_failed_joiner_commits_nothing() -> None:
    joiner = Joiner(load_config(overrides=["joiner.poison_tries=3"]))
    joiner.out_parts = 1
    shard = joiner._shard(0)
    calls = []

    def explode(*args: Any) -> None:
        calls.append(args)
        raise KeyError("boom")

    shard.on_event = explode  # type: ignore[method-assign]
    good = orjson.dumps(
        {"type": "click", "event_id": "e1", "request_id": "r", "ts_ms": 1, "user_id": "u", "item_id": "i"}
    )
    joiner._consume(SimpleNamespace(topic="clicks", partition=0), [SimpleNamespace(offset=7, value=good)], 10)
    assert len(calls) == 3  # tried poison_tries times
    assert shard.counts["dead_poison"] == 1
    assert shard.dead[-1]["reason"].startswith("poison: KeyError") and shard.dead[-1]["source"]["offset"] == 7
    joiner.consumer, joiner.producer = _Consumer(), _Producer()  # type: ignore[assignment]
    joiner.shutdown(clean=False)
    assert joiner.consumer.commits == 0 and joiner.consumer.closed  # type: ignore[attr-defined]
