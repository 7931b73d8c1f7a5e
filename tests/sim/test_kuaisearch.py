"""`streamrl import kuaisearch` on a folder in the KuaiSearch layout, then `streamrl replay`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq


def _write(path: Path, rows: list[object]) -> None:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))


def test_import_then_replay_gives_one_record_per_session(tmp_path: Path) -> None:
    src = tmp_path / "kuaisearch"
    src.mkdir()
    sessions = [
        {
            "user_id": 1,
            "session_id": 100,
            "query": "连衣裙 夏季",
            "time_index": 3,
            "impressed_item_ids": [11, 12, 13],
            "clicked_item_ids": [12],
            "purchased_item_ids": [12],
            "split": "train",
        },
        {
            "user_id": 2,
            "session_id": 101,
            "query": "running shoes",
            "time_index": 1,
            "impressed_item_ids": [21, 22],
            "clicked_item_ids": [21, 22],
            "purchased_item_ids": [],
            "split": "test",
        },
        # a click on an item that was not in the impressed list: appended, so the flags still match
        {
            "user_id": 2,
            "session_id": 102,
            "query": "socks",
            "time_index": 2,
            "impressed_item_ids": [31],
            "clicked_item_ids": [99],
            "purchased_item_ids": [99],
            "split": "train",
        },
        {
            "user_id": 3,
            "session_id": 103,
            "query": "no clicks",
            "time_index": 4,
            "impressed_item_ids": [41, 42],
            "clicked_item_ids": [],
            "purchased_item_ids": [],
            "split": "train",
        },
        b"{not json",
        {"user_id": 4, "session_id": 104, "query": "missing time"},
    ]
    _write(src / "recall.jsonl", sessions)
    _write(
        src / "items.jsonl",
        [
            {
                "item_id": 12,
                "item_title": "碎花连衣裙",
                "brand_id": 5,
                "brand_name": "B",
                "seller_id": 77,
                "seller_name": "S",
                "category_level1_id": 1,
                "category_level1_name": "女装",
                "category_level2_id": 2,
                "category_level2_name": "裙装",
                "category_level3_id": 3,
                "category_level3_name": "连衣裙",
            },
            {"item_id": 999, "item_title": "never impressed"},  # demo ids need not match: fine
        ],
    )
    _write(
        src / "relevance.jsonl",
        [
            {
                "query": "连衣裙 夏季",
                "item_title": "碎花连衣裙",
                "brand": "B",
                "seller_name": "S",
                "attr_value": "",
                "score": 3,
            },
            {"query": "broken", "score": "high"},
        ],
    )
    events = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", "import", "kuaisearch", str(src), "--out", str(events)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "recall.jsonl:5" in proc.stderr and "recall.jsonl:6" in proc.stderr  # warned, not crashed
    assert "users.jsonl" not in proc.stderr  # ignored by design, not reported missing
    item_events = [orjson.loads(x) for x in events.read_bytes().splitlines() if b'"type":"item"' in x]
    by_id = {e["item_id"]: e for e in item_events}
    assert by_id["12"]["merchant_id"] == "77" and by_id["12"]["category"] == ["女装", "裙装", "连衣裙"]
    assert by_id["11"]["title"] == "" and by_id["11"]["category"] == []

    out = tmp_path / "joined"
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", "replay", str(events), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    records = {r["request_id"]: r for f in out.glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert set(records) == {"ks-100", "ks-101", "ks-102", "ks-103"}
    for s in sessions[:4]:
        assert isinstance(s, dict)
        rec = records[f"ks-{s['session_id']}"]
        assert {i["item_id"] for i in rec["items"] if i["clicked"]} == {str(x) for x in s["clicked_item_ids"]}
        assert {i["item_id"] for i in rec["items"] if i["ordered"]} == {
            str(x) for x in s["purchased_item_ids"]
        }
        assert [i["item_id"] for i in rec["items"]][: len(s["impressed_item_ids"])] == [
            str(x) for x in s["impressed_item_ids"]
        ]
    tiers = {i["item_id"]: i["rel_tier"] for i in records["ks-100"]["items"]}
    assert tiers == {"11": -1, "12": 3, "13": -1}
    assert (out / "dlq.jsonl").read_bytes() == b""
