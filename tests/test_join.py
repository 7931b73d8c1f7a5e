"""Join semantics (docs/architecture.md "Join semantics"), table-driven, clock passed in.

Defaults used: window 600 s, lateness 30 s, orphan TTL 120 s. Times below are in seconds of event
time; `t(s)` turns them into ms.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamrl.configs import JoinConfig
from streamrl.stream.events import decode_event
from streamrl.stream.join import Enricher, JoinState, Source

CFG = JoinConfig()


def t(s: float) -> int:
    return int(s * 1000)


def imp(rid: str, ts: float, items: str = "abc", eid: str | None = None, user: str = "u") -> dict:
    return {
        "type": "impression",
        "event_id": eid or f"{rid}-imp",
        "request_id": rid,
        "ts_ms": t(ts),
        "user_id": user,
        "query": "q",
        "items": [{"item_id": i, "position": n + 1, "rel_tier": 2} for n, i in enumerate(items)],
    }


def act(kind: str, rid: str, item: str, ts: float, eid: str | None = None) -> dict:
    return {
        "type": kind,
        "event_id": eid or f"{rid}-{kind}-{item}-{ts}",
        "request_id": rid,
        "ts_ms": t(ts),
        "user_id": "u",
        "item_id": item,
    }


def run(events: list[dict], cfg: JoinConfig = CFG, finish: bool = True):
    state = JoinState(cfg, Enricher(cfg))
    clock = 0
    for n, ev in enumerate(events):
        raw = orjson.dumps(ev)
        clock = max(clock, ev["ts_ms"])
        state.on_event(decode_event(raw), raw, Source("f", -1, n + 1), "in", clock)
    if finish:
        state.finish(clock)
    records = state.records.to_pylist()
    return state, {r["request_id"]: r for r in records}, [d["reason"] for d in state.dead]


def flags(rec: dict[str, Any]) -> tuple[set[str], set[str]]:
    return (
        {i["item_id"] for i in rec["items"] if i["clicked"]},
        {i["item_id"] for i in rec["items"] if i["ordered"]},
    )


CASES = [
    # (name, events, expected {rid: (clicked, ordered)}, expected dead reasons)
    (
        "click and order attributed",
        [imp("r", 0), act("click", "r", "a", 5), act("order", "r", "a", 50)],
        {"r": ({"a"}, {"a"})},
        [],
    ),
    (
        "window edges are inclusive: 0 s and exactly 600 s",
        [imp("r", 100), act("click", "r", "a", 100), act("click", "r", "b", 700)],
        {"r": ({"a", "b"}, set())},
        [],
    ),
    (
        "click before impression time or after the window is outside_window",
        [imp("r", 100), act("click", "r", "a", 99), act("click", "r", "b", 700.001)],
        {"r": (set(), set())},
        ["outside_window", "outside_window"],
    ),
    (
        "item not in the impression",
        [imp("r", 0), act("click", "r", "z", 1)],
        {"r": (set(), set())},
        ["item_not_impressed"],
    ),
    (
        "a redelivered event (same id, same content) counts once",
        [imp("r", 0), act("click", "r", "a", 1, "x"), act("click", "r", "a", 1, "x")],
        {"r": ({"a"}, set())},
        [],
    ),
    (
        "a reused event_id with other content is dead-lettered, not dropped",
        [imp("r", 0), act("click", "r", "a", 1, "x"), act("click", "r", "b", 1, "x")],
        {"r": ({"a"}, set())},
        ["reused_event_id: an earlier event had this event_id with other content"],
    ),
    (
        "an orphan that meets its impression is attributed",
        [act("click", "r", "a", 10), imp("r", 5)],
        {"r": ({"a"}, set())},
        [],
    ),
    (
        "an orphan whose impression never comes is dead-lettered",
        [act("click", "lost", "a", 10), imp("other", 11)],
        {"other": (set(), set())},
        ["orphan"],
    ),
    (
        "an orphan expires once the watermark passes its ts + ttl (120 s + 30 s lateness)",
        [act("click", "r", "a", 0), imp("x", 151), imp("r", 0)],
        {"r": (set(), set()), "x": (set(), set())},
        ["orphan"],
    ),
    (
        "a click after the request is finalised is late",
        [imp("r", 0), imp("x", 631), act("click", "r", "a", 10)],
        {"r": (set(), set()), "x": (set(), set())},
        ["late"],
    ),
    (
        "a redelivered click with a new event_id for an already-clicked item is not dead-lettered",
        [imp("r", 0), act("click", "r", "a", 10, "c1"), imp("x", 631), act("click", "r", "a", 10, "c2")],
        {"r": ({"a"}, set()), "x": (set(), set())},
        [],
    ),
    (
        "a second impression for an open request is a redelivery",
        [imp("r", 0, "ab"), imp("r", 1, "cd", eid="other"), act("click", "r", "c", 2)],
        {"r": (set(), set())},
        ["item_not_impressed"],
    ),
    (
        "disorder within the lateness bound changes nothing",
        [imp("r", 0), imp("x", 620), act("click", "r", "a", 595)],
        {"r": ({"a"}, set()), "x": (set(), set())},
        [],
    ),
]


@pytest.mark.parametrize(("name", "events", "expected", "dead"), CASES, ids=[c[0] for c in CASES])
def test_join_rules(name: str, events: list[dict], expected: dict, dead: list[str]) -> None:
    _, records, reasons = run(events)
    assert {rid: flags(rec) for rid, rec in records.items()} == expected
    assert reasons == dead


def test_record_fields_and_co_score() -> None:
    _, records, _ = run(
        [imp("r", 0, "abc"), act("click", "r", "a", 1), act("click", "r", "b", 2), act("order", "r", "b", 3)]
    )
    rec = records["r"]
    assert rec["schema_version"] == 1 and rec["ts_ms"] == 0 and rec["user_id"] == "u"
    assert [(i["item_id"], i["position"], i["rel_tier"]) for i in rec["items"]] == [
        ("a", 1, 2),
        ("b", 2, 2),
        ("c", 3, 2),
    ]
    # v_order 4.0 when ordered, else v_click 3.0 when clicked, else 0 (released code values)
    assert [i["co_score"] for i in rec["items"]] == [3.0, 4.0, 0.0]
    assert all(0 < i["ctr"] < 1 for i in rec["items"])


def test_finalised_by_watermark_in_event_time_order() -> None:
    state, records, _ = run([imp("r1", 0), imp("r2", 10), imp("x", 641)], finish=False)
    # watermark = 641 - 30 = 611 > 0 + 600 and > 10 + 600 → r1 then r2, x still open
    assert list(records) == ["r1", "r2"]
    assert set(state.open) == {"x"}
    assert all(r["finalize_reason"] == "watermark" for r in records.values())


def test_ctr_uses_only_earlier_requests_and_history_is_newest_first() -> None:
    events = [
        imp("r1", 0, "ab"),
        act("click", "r1", "a", 1),
        imp("r2", 100, "cd"),
        act("click", "r2", "d", 101),
        imp("r3", 200, "ad"),
    ]
    _, records, _ = run(events)
    # r1 is scored before anything is counted: the prior. Its own click never leaks into it.
    assert records["r1"]["items"][0]["ctr"] == pytest.approx(0.05)
    # r3 sees r1's click on "a" for the same query: above the prior
    assert records["r3"]["items"][0]["ctr"] > 0.05
    assert records["r1"]["history"] == []
    assert records["r2"]["history"] == ["a"]
    assert records["r3"]["history"] == ["d", "a"]


def test_bounded_open_state_finalises_oldest_early() -> None:
    cfg = JoinConfig(max_open_requests=2)
    state, records, _ = run([imp("r1", 0), imp("r2", 1), imp("r3", 2)], cfg, finish=False)
    assert list(records) == ["r1"] and records["r1"]["finalize_reason"] == "evicted"
    assert state.counts["evicted"] == 1 and set(state.open) == {"r2", "r3"}


def test_idle_flush_on_wall_clock() -> None:
    state = JoinState(CFG, Enricher(CFG))
    raw = orjson.dumps(imp("r", 0))
    state.on_event(decode_event(raw), raw, Source("f", -1, 1), "in", now_ms=1_000)
    state.tick(1_000 + t(CFG.idle_finalize_s) - 1)
    assert state.open
    state.tick(1_000 + t(CFG.idle_finalize_s))
    assert not state.open and state.records.to_pylist()[0]["finalize_reason"] == "idle"


def test_watermark_waits_for_streams_still_catching_up() -> None:
    state = JoinState(CFG, Enricher(CFG), streams=("imps", "clicks"))
    r1 = orjson.dumps(imp("r", 0))
    state.on_event(decode_event(r1), r1, Source("imps", 0, 0), "imps", 0)
    far = orjson.dumps(imp("x", 5000))
    state.on_event(decode_event(far), far, Source("imps", 0, 1), "imps", 0)
    assert "r" in state.open  # the clicks stream has shown nothing yet: no watermark
    click = orjson.dumps(act("click", "r", "a", 10))
    state.on_event(decode_event(click), click, Source("clicks", 0, 0), "clicks", 0)
    assert "r" in state.open  # watermark = min(5000, 10) - 30
    state.set_caught_up("clicks", True, 0)  # clicks has nothing more: imps alone decide
    assert "r" not in state.open
    assert flags(state.records.to_pylist()[0]) == ({"a"}, set())


def test_held_offsets_cover_every_event_open_state_depends_on() -> None:
    state = JoinState(CFG, Enricher(CFG), streams=("imps", "clicks"))
    for src, ev in [
        (Source("imps", 3, 10), imp("r", 0)),
        (Source("clicks", 3, 7), act("click", "r", "a", 1)),
        (Source("clicks", 3, 8), act("click", "q", "a", 1)),
    ]:
        raw = orjson.dumps(ev)
        state.on_event(decode_event(raw), raw, src, src.stream, 0)
    assert state.held_offsets() == {("imps", 3): 10, ("clicks", 3): 7}


def test_recovered_finalised_request_is_not_emitted_again() -> None:
    # what the joiner does on start: fold the rewards topic back in and seed the shard with it
    first, _, _ = run([imp("r", 0), act("click", "r", "a", 1)])
    enricher = Enricher(CFG)
    state = JoinState(CFG, enricher)
    state.finalized.update(enricher.absorb_table(first.drain()[0].table()))
    for n, ev in enumerate([imp("r", 0), act("click", "r", "a", 1), act("click", "r", "b", 2)]):
        raw = orjson.dumps(ev)
        state.on_event(decode_event(raw), raw, Source("f", -1, n), "in", 0)
    state.finish(0)
    assert len(state.records) == 0
    assert state.counts["redelivered"] == 2  # the impression and the click on "a"
    assert [d["reason"] for d in state.dead] == ["late"]  # "b" was never in the record


def test_recovery_from_records_rebuilds_ctr_and_history() -> None:
    """A restarted joiner folds the rewards topic back in (Enricher.absorb_table): it must then
    score the next request exactly as the joiner that never stopped."""
    events = [
        imp("r1", 0, "ab", user="u1"),
        act("click", "r1", "a", 1),
        imp("r2", 50, "abc", user="u2"),
        act("click", "r2", "c", 51),
        imp("r3", 100, "bc", user="u1"),
        act("click", "r3", "b", 101),
    ]
    state, _, _ = run(events)
    table = state.drain()[0].table()
    restarted = Enricher(CFG)
    recovered = dict(restarted.absorb_table(table))
    assert recovered["r1"].clicked == {"a"} and recovered["r2"].ordered == frozenset()
    nxt = orjson.dumps(imp("r4", 200, "abc", user="u1"))
    scores = []
    for enricher in (state.enricher, restarted):
        s = JoinState(CFG, enricher)
        s.on_event(decode_event(nxt), nxt, Source("f", -1, 1), "in", 0)
        s.finish(0)
        scores.append(s.records.to_pylist()[0])
    assert scores[0]["history"] == scores[1]["history"] == ["b", "a"]
    assert [i["ctr"] for i in scores[0]["items"]] == pytest.approx([i["ctr"] for i in scores[1]["items"]])
