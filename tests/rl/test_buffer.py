"""Issue #11 §3: the sampling buffer caps reuse (a quiet stream idles instead of overfitting), reports
its reuse factor, expires by event time, and survives a restart with its use counts."""

from __future__ import annotations

import random
from pathlib import Path

from streamrl.rl.buffer import SampleBuffer


def _rec(n: int, ts: int = 1_000) -> dict:
    return {
        "schema_version": 1,
        "request_id": f"r{n}",
        "user_id": "u",
        "query": "wool socks",
        "ts_ms": ts + n,
        "finalized_ms": ts + n + 1,
        "keywords": [],
        "history": [],
        "finalize_reason": "window",
        "items": [
            {
                "item_id": "i1",
                "position": 1,
                "clicked": True,
                "ordered": False,
                "rel_tier": 2,
                "ctr": 0.1,
                "co_score": 1.0,
            }
        ],
    }


def test_a_record_leaves_after_max_reuse_samples_and_the_learner_idles() -> None:
    buf = SampleBuffer(size=100, max_age_s=3600, max_reuse=3)
    buf.extend(_rec(n) for n in range(8))
    rng = random.Random(0)
    counts: dict[str, int] = {}
    steps = 0
    while buf.ready(4):
        for r in buf.sample(rng, 4):
            counts[r["request_id"]] = counts.get(r["request_id"], 0) + 1
        steps += 1
    # 8 records x 3 uses = 24 samples = 6 steps of 4, then too few fresh prompts: idle
    assert steps == 6 and len(buf) == 0 and set(counts.values()) == {3} and len(counts) == 8
    assert buf.reuse_factor == 3.0
    buf.extend([_rec(100)])
    assert not buf.ready(4)  # one new record does not make a batch: still idle


def test_no_cap_keeps_records_and_age_expires_them() -> None:
    buf = SampleBuffer(size=5, max_age_s=10, max_reuse=None)
    buf.extend(_rec(n) for n in range(8))  # size 5: the oldest three left
    assert [r["request_id"] for r, _ in buf.entries] == ["r3", "r4", "r5", "r6", "r7"]
    for _ in range(50):
        buf.sample(random.Random(1), 5)
    assert len(buf) == 5 and buf.reuse_factor == 50.0
    buf.expire(newest_ms=1_005 + 10_000)  # event time moves on: r3 and r4 are more than 10 s older
    assert [r["request_id"] for r, _ in buf.entries] == ["r5", "r6", "r7"]


def test_the_buffer_round_trips_with_its_use_counts(tmp_path: Path) -> None:
    buf = SampleBuffer(size=100, max_age_s=3600, max_reuse=4)
    buf.extend(_rec(n) for n in range(6))
    buf.sample(random.Random(2), 3)
    buf.save(tmp_path / "buffer.parquet")
    back = SampleBuffer(size=100, max_age_s=3600, max_reuse=4)
    assert back.load(tmp_path / "buffer.parquet") == 6
    assert [(r["request_id"], u) for r, u in back.entries] == [(r["request_id"], u) for r, u in buf.entries]
    assert back.entries[0][0]["items"][0]["rel_tier"] == 2
