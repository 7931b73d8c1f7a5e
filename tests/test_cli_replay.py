"""`streamrl replay` as a user runs it: exit codes, outputs, determinism, real ESCI/OTTO data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from conftest import shared_data

from streamrl.stream.synthetic import SynthSpec, write_jsonl


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamrl", *args], capture_output=True, text=True, timeout=120
    )


def test_replay_writes_records_and_dead_letters(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(
        SynthSpec(
            requests=300,
            seed=5,
            rate_per_s=1,
            dup_rate=0.05,
            orphan_rate=0.05,
            malformed_rate=0.05,
            late_rate=0.05,
            not_impressed_rate=0.05,
        ),
        str(events),
    )
    with open(events, "ab") as fh:
        fh.write(b"\n{broken\n")
    out = tmp_path / "out"
    proc = run("replay", str(events), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["records"] == 300
    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 300 and len({r["request_id"] for r in rows}) == 300
    dead = [orjson.loads(x) for x in (out / "dlq.jsonl").read_bytes().splitlines()]
    assert len(dead) == summary["dead_letters"] > 0
    broken = [d for d in dead if d["raw"] == "{broken"]
    assert broken and broken[0]["reason"].startswith("malformed: not JSON")
    assert broken[0]["source"] == {"file": str(events), "line": len(events.read_bytes().splitlines())}
    reasons = {d["reason"].split(":")[0] for d in dead}
    assert reasons == {"malformed", "orphan", "late", "item_not_impressed"}
    # deterministic: the same input gives byte-identical record files
    again = run("replay", str(events), "--out", str(tmp_path / "again"))
    assert again.returncode == 0
    assert (out / "records-00000.parquet").read_bytes() == (
        tmp_path / "again" / "records-00000.parquet"
    ).read_bytes()


def test_replay_unreadable_input_exits_non_zero(tmp_path: Path) -> None:
    proc = run("replay", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "missing.jsonl" in proc.stderr


def test_replay_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("join:\n  window_s: -5\n  typo_key: 1\n")
    events = tmp_path / "e.jsonl"
    events.write_text("")
    proc = run("replay", str(events), "--out", str(tmp_path / "o"), "--config", str(bad))
    assert proc.returncode == 2
    assert "join.window_s" in proc.stderr and "join.typo_key" in proc.stderr


def test_real_esci_queries_and_otto_delays_flow_through(tmp_path: Path) -> None:
    """Real ESCI queries with their judged tiers (Apache-2.0, Reddy et al. 2022) as impressions,
    and real OTTO click→order sessions (CC BY 4.0) as clicks and orders with their real gaps."""
    judg = json.loads(shared_data("esci/esci_us_judgments.json").read_text())["judgmentRatings"]
    sessions = [json.loads(x) for x in shared_data("otto/train_sample.jsonl").read_text().splitlines()]
    tier = {"100.000": 3, "10.000": 2, "1.000": 1, "0.000": 0}
    lines, expect = [], {}
    for n, (q, sess) in enumerate(zip(judg, sessions, strict=False)):
        ratings = q["ratings"][:10]
        events = sess["events"]
        t0 = events[0]["ts"]
        rid = f"esci-{n}"
        lines.append(
            {
                "type": "impression",
                "event_id": f"{rid}-i",
                "request_id": rid,
                "ts_ms": t0,
                "user_id": f"otto-{sess['session']}",
                "query": q["query"],
                "items": [
                    {"item_id": r["docId"], "position": p + 1, "rel_tier": tier[r["rating"]]}
                    for p, r in enumerate(ratings)
                ],
            }
        )
        # the session's first click and order, moved onto the first judged item, keep real gaps
        clicks = [e for e in events if e["type"] == "clicks" and e["ts"] - t0 <= 600_000]
        orders = [e for e in events if e["type"] == "orders" and e["ts"] - t0 <= 600_000]
        for kind, evs in (("click", clicks[:1]), ("order", orders[:1])):
            for e in evs:
                lines.append(
                    {
                        "type": kind,
                        "event_id": f"{rid}-{kind}",
                        "request_id": rid,
                        "ts_ms": e["ts"],
                        "user_id": f"otto-{sess['session']}",
                        "item_id": ratings[0]["docId"],
                    }
                )
        expect[rid] = (bool(clicks), bool(orders), [tier[r["rating"]] for r in ratings])
    events_path = tmp_path / "real.jsonl"
    events_path.write_bytes(
        b"".join(orjson.dumps(x) + b"\n" for x in sorted(lines, key=lambda e: e["ts_ms"]))
    )
    proc = run("replay", str(events_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    rows = {r["request_id"]: r for r in pq.read_table(tmp_path / "o/records-00000.parquet").to_pylist()}
    assert set(rows) == set(expect)
    for rid, (clicked, ordered, tiers) in expect.items():
        first = rows[rid]["items"][0]
        assert (first["clicked"], first["ordered"]) == (clicked, ordered)
        assert [i["rel_tier"] for i in rows[rid]["items"]] == tiers
    assert any(v[0] for v in expect.values()) and any(v[1] for v in expect.values())
