"""The joiner on a real Kafka-protocol broker (Tansu on loopback): end to end, dead letters,
kill -9 recovery, and the reader's duplicate dropping."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamrl.configs import StreamrlConfig, load_config
from streamrl.stream import kafka_io
from streamrl.stream.archive import part_files
from streamrl.stream.events import Malformed, decode_event
from streamrl.stream.records import read_records
from streamrl.stream.synthetic import SynthSpec, generate

from .helpers import (
    TEST_JOIN,
    flags,
    free_port,
    overrides,
    produce,
    read_all_records,
    reference_records,
    scrape,
    start_joiner,
)

pytestmark = pytest.mark.integration

SPEC = SynthSpec(
    requests=1500,
    seed=11,
    rate_per_s=20,
    window_ms=20_000,
    click_delay_ms=8_000,
    order_delay_ms=10_000,
    disorder_ms=3_000,
    dup_rate=0.02,
    orphan_rate=0.01,
    not_impressed_rate=0.01,
    malformed_rate=0.01,
)


def _is_malformed(raw: bytes) -> bool:
    try:
        decode_event(raw)
    except Malformed:
        return True
    return False


def _rewards_size(cfg: StreamrlConfig) -> int:
    return sum(1 for _ in kafka_io.read_span(cfg.kafka, cfg.kafka.topics.rewards, timeout_s=10))


def _join_cfg(cfg: StreamrlConfig) -> StreamrlConfig:
    return load_config(overrides=[*overrides(cfg), *TEST_JOIN])


def _stop(proc, timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_join_end_to_end_matches_replay(kafka_cfg: StreamrlConfig, tmp_path: Path) -> None:
    cfg = _join_cfg(kafka_cfg)
    lines = [raw for _, raw in generate(SPEC)]
    want = reference_records(lines, tmp_path, cfg.join)
    t = cfg.kafka.topics
    kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items, t.rewards, t.dlq])
    produce(cfg, lines)
    port = free_port()
    proc = start_joiner(cfg, tmp_path / "joiner.log", [f"metrics.joiner_port={port}"])
    try:
        got, dups = read_all_records(cfg, expect=len(want), timeout_s=90)
        # /metrics answers with the series; the counters agree with what was produced
        deadline = time.monotonic() + 15
        while f"streamrl_joiner_records_out_total {float(len(want))}" not in (text := scrape(port)):
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.5)
        for series in (
            f'streamrl_joiner_consumer_lag{{partition="0",topic="{t.impressions}"}}',
            f'streamrl_joiner_events_in_total{{topic="{t.clicks}"}}',
            'streamrl_joiner_dead_letters_total{reason="orphan"}',
            "streamrl_joiner_open_requests ",
            "streamrl_joiner_state_bytes ",
            "streamrl_joiner_late_events_total ",
        ):
            assert series in text, series
        assert json.loads(scrape(port, "/healthz"))["ok"] is True
    finally:
        code = _stop(proc)
    assert code == 0, (tmp_path / "joiner.log").read_text()[-3000:]
    assert set(got) == set(want)
    assert {r: flags(x) for r, x in got.items()} == {r: flags(x) for r, x in want.items()}
    assert dups == 0
    # dead letters carry the reason, the raw value and where it came from
    dead = [orjson.loads(v) for _, _, v in kafka_io.read_span(cfg.kafka, t.dlq)]
    malformed = [d for d in dead if d["reason"].startswith("malformed")]
    assert len(malformed) == sum(1 for x in lines if _is_malformed(x))
    assert all({"topic", "partition", "offset"} <= set(d["source"]) and d["raw"] for d in dead)
    assert {d["reason"].split(":")[0] for d in dead} >= {"malformed", "orphan", "item_not_impressed"}
    # an operator's view of the same: `streamrl records` through the learner's reader
    dump = tmp_path / "records.jsonl"
    cmd = [sys.executable, "-m", "streamrl", "records", "--out", str(dump), "--idle-s", "3"]
    for o in overrides(cfg):
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    dumped = [orjson.loads(x) for x in dump.read_bytes().splitlines()]
    assert sorted(r["request_id"] for r in dumped) == sorted(want)
    # the archive holds every record exactly once
    archived = list(read_records(part_files(Path(cfg.archive.dir))))
    assert sorted(r["request_id"] for r in archived) == sorted(want)


def test_kill_9_loses_and_duplicates_nothing(kafka_cfg: StreamrlConfig, tmp_path: Path) -> None:
    cfg = _join_cfg(kafka_cfg)
    spec = SynthSpec(**{**SPEC.__dict__, "requests": 4000, "seed": 12})
    lines = [raw for _, raw in generate(spec)]
    want = reference_records(lines, tmp_path, cfg.join)
    t = cfg.kafka.topics
    kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items, t.rewards, t.dlq])
    log = tmp_path / "joiner.log"
    static = ["kafka.group_instance_id=joiner-0"]
    proc = start_joiner(cfg, log, static)
    rng = random.Random(3)
    chunk = len(lines) // 8
    kills = 0
    for i in range(0, len(lines), chunk):  # a live stream: produced while the joiner runs and dies
        produce(cfg, lines[i : i + chunk])
        if kills < 3 and i >= 2 * chunk:
            # kill only once this member has put output on the rewards topic, mid-stream
            before = _rewards_size(cfg)
            deadline = time.monotonic() + 60
            while _rewards_size(cfg) == before and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(rng.uniform(0.1, 1.0))
            proc.kill()  # SIGKILL: no drain, no commit
            proc.wait()
            kills += 1
            proc = start_joiner(cfg, log, static)
    try:
        got, dups = read_all_records(cfg, expect=len(want), timeout_s=120)
    finally:
        code = _stop(proc)
    assert kills == 3 and code == 0
    missing = set(want) - set(got)
    assert not missing, f"{len(missing)} requests lost"
    assert set(got) == set(want)
    assert {r: flags(x) for r, x in got.items()} == {r: flags(x) for r, x in want.items()}
    # the kills landed mid-stream: restarted members found output of the earlier ones to recover
    recovered = [int(m) for m in re.findall(r"recovered (\d+) records", log.read_text())]
    assert len(recovered) == 4 and max(recovered) > 0, recovered
    print(f"recovered on restart: {recovered}; duplicates dropped by the reader: {dups}")


def test_reader_drops_duplicates_even_across_restarts(kafka_cfg: StreamrlConfig) -> None:
    from streamrl.stream.records import records_table

    cfg = kafka_cfg
    t = cfg.kafka.topics
    kafka_io.ensure_topics(cfg.kafka, [t.rewards], partitions=1)
    rec = {
        "request_id": "",
        "user_id": "u",
        "query": "q",
        "ts_ms": 1,
        "finalized_ms": 2,
        "keywords": [],
        "history": [],
        "finalize_reason": "watermark",
        "items": [
            {
                "item_id": "a",
                "position": 1,
                "rel_tier": 3,
                "ctr": 0.1,
                "clicked": True,
                "ordered": False,
                "co_score": 3.0,
            }
        ],
    }
    producer = kafka_io.make_producer(cfg.kafka)

    def send(ids: list[str], clicked: bool = True) -> None:
        recs = [{**rec, "request_id": i, "items": [{**rec["items"][0], "clicked": clicked}]} for i in ids]
        kafka_io.send_records(producer, t.rewards, 0, records_table(recs)).get(timeout=10)

    send(["r1", "r2"])
    send(["r2", "r3"], clicked=False)  # r2 again, with different flags: the first copy must win
    reader = kafka_io.RewardReader(cfg.kafka, "dedup-reader")
    got: list[dict] = []
    deadline = time.monotonic() + 30
    while len(got) < 3 and time.monotonic() < deadline:
        got += reader.poll(500)
    reader.commit()
    reader.close()
    assert [r["request_id"] for r in got] == ["r1", "r2", "r3"]
    assert got[1]["items"][0]["clicked"] is True
    # a copy that lands after the reader restarted is still dropped; new requests still pass
    send(["r1", "r4"])
    reader = kafka_io.RewardReader(cfg.kafka, "dedup-reader")
    later: list[dict] = []
    deadline = time.monotonic() + 30
    while not later and time.monotonic() < deadline:
        later += reader.poll(500)
    reader.close()
    assert [r["request_id"] for r in later] == ["r4"]
