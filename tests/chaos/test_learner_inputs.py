"""Issue #14's downstream rows without a broker: reward batches split by bytes under the producer limit
(one oversize record alone), and prompts that stay bounded whatever the query (two records with 1 MB
queries once killed the learner for memory)."""

from __future__ import annotations

import pyarrow as pa

from streamrl.rl.policy import MAX_QUERY_TOKENS, build_tokenizer, format_prompt
from streamrl.stream.kafka_io import split_by_bytes
from streamrl.stream.records import RECORD_SCHEMA, SKIPPED_BATCHES, BadBatch, decode_batch, decode_or_skip


def _records(n: int, query_chars: int) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append(
            {
                **{f.name: None for f in RECORD_SCHEMA},
                "schema_version": 1,
                "request_id": f"r{i}",
                "ts_ms": 1,
                "user_id": "u",
                "query": "q" * query_chars,
                "items": [],
                "history": [],
            }
        )
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def test_reward_batches_are_split_by_bytes_and_an_oversize_record_stands_alone() -> None:
    table = _records(80, 50_000)  # 80 records of ~50 kB: 4 MB in one batch of 500 records
    parts = split_by_bytes(table, 500, 900_000)
    assert sum(t.num_rows for t, _ in parts) == 80
    assert all(len(data) <= 900_000 for _, data in parts) and len(parts) >= 5
    assert [r for t, _ in parts for r in t.column("request_id").to_pylist()] == [f"r{i}" for i in range(80)]
    huge = split_by_bytes(_records(3, 2_000_000), 500, 900_000)
    assert [t.num_rows for t, _ in huge] == [1, 1, 1] and all(len(d) > 900_000 for _, d in huge)


def test_garbage_on_the_rewards_topic_is_skipped_and_counted() -> None:
    before = SKIPPED_BATCHES["test"]
    for junk in (b"", b"garbage", b"\xff" * 100, None):
        assert decode_or_skip(junk, "test") is None
    assert SKIPPED_BATCHES["test"] == before + 4
    try:
        decode_batch(b"garbage")
    except BadBatch as exc:
        assert "Arrow" in str(exc)
    else:
        raise AssertionError("garbage decoded")


def test_prompts_stay_bounded_whatever_the_query() -> None:
    tok = build_tokenizer((8, 4, 4))
    empty = len(tok(format_prompt("", [(1, 2, 3)] * 5, tok), add_special_tokens=False)["input_ids"])
    for query in ("x" * 1_000_000, "𝔘" * 300_000, "红" * 500_000):
        prompt = format_prompt(query, [(1, 2, 3)] * 5, tok)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert len(ids) <= empty + MAX_QUERY_TOKENS  # the template and history, plus the clipped query


def test_the_streaming_learner_refuses_records_it_cannot_use() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from streamrl.configs import load_config
    from streamrl.rl.streaming import StreamingLearner

    letters: list[dict] = []
    fake = SimpleNamespace(cfg=load_config(), refused=Counter(), _dead_letter=letters.append)
    ok = {"request_id": "ok", "query": "q", "items": [{"item_id": "i"}]}
    records = [
        ok,
        {"request_id": "none", "query": "q", "items": []},
        {"request_id": "many", "query": "q", "items": [{"item_id": str(i)} for i in range(501)]},
        {"request_id": "long", "query": "q" * 1_000_000, "items": [{"item_id": "i"}]},
    ]
    assert StreamingLearner._admit(fake, records) == [ok]  # type: ignore[arg-type]
    assert fake.refused == {"no_items": 1, "too_many_items": 1, "query_too_long": 1}
    assert [d["request_id"] for d in letters] == ["none", "many", "long"]
    assert all(d["reason"].startswith("learner refused: ") for d in letters)
