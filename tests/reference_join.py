"""An independent, deliberately naive join used only to check stream/join.py.

It follows the rules in docs/architecture.md literally, one event at a time, with plain lists and
no heaps, shards or state machines: for every event it recomputes what it needs from the arrival
history. Quadratic in places; fine for test-sized inputs.
"""

from __future__ import annotations

import json
from typing import Any


def reference_join(lines: list[bytes], window_ms: int, lateness_ms: int, ttl_ms: int):
    """Return ({request_id: {"items": [(item_id, position, tier)], "clicked": set, "ordered": set}},
    [dead-letter reasons in arrival order])."""
    valid: list[dict[str, Any]] = []  # arrival order, decoded, deduplicated
    dead: list[str] = []
    seen: set[str] = set()
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            dead.append("malformed")
            continue
        if not _valid(ev):
            dead.append("malformed")
            continue
        if ev["type"] == "item":
            continue
        if ev["event_id"] in seen:
            continue
        seen.add(ev["event_id"])
        valid.append(ev)

    prefix_max = [float("-inf")]  # prefix_max[j] = highest ts among valid[:j]
    for e in valid:
        prefix_max.append(max(prefix_max[-1], e["ts_ms"]))

    def watermark_before(j: int) -> float:
        return prefix_max[j] - lateness_ms

    opened: dict[str, int] = {}  # request_id -> index of its impression
    for j, ev in enumerate(valid):
        if ev["type"] == "impression" and ev["request_id"] not in opened:
            opened[ev["request_id"]] = j
    out: dict[str, dict[str, Any]] = {}
    for rid, j in opened.items():
        imp = valid[j]
        out[rid] = {
            "items": [
                (it["item_id"], it["position"], -1 if it["rel_tier"] is None else it["rel_tier"])
                for it in imp["items"]
            ],
            "clicked": set(),
            "ordered": set(),
        }
    for k, ev in enumerate(valid):
        if ev["type"] == "impression":
            continue
        rid = ev["request_id"]
        if rid not in opened:
            dead.append("late" if watermark_before(k) > ev["ts_ms"] + window_ms else "orphan")
            continue
        j = opened[rid]
        imp = valid[j]
        if k < j:  # arrived before its impression: waits until the watermark passes ts + ttl
            if watermark_before(j) > ev["ts_ms"] + ttl_ms:
                dead.append("orphan")
                continue
        elif watermark_before(k) > imp["ts_ms"] + window_ms:
            # A finalised request is remembered for window + lateness + ttl past its ts; within
            # that, a click on an item its record already shows clicked is a redelivery.
            flags = out[rid]["clicked" if ev["type"] == "click" else "ordered"]
            remembered = watermark_before(k) <= imp["ts_ms"] + window_ms + lateness_ms + ttl_ms
            dead.append("redelivered" if remembered and ev["item_id"] in flags else "late")
            continue
        if ev["item_id"] not in {it["item_id"] for it in imp["items"]}:
            dead.append("item_not_impressed")
            continue
        if not 0 <= ev["ts_ms"] - imp["ts_ms"] <= window_ms:
            dead.append("outside_window")
            continue
        out[rid]["clicked" if ev["type"] == "click" else "ordered"].add(ev["item_id"])
    return out, [d for d in dead if d != "redelivered"]


def _valid(ev: Any) -> bool:
    if not isinstance(ev, dict) or ev.get("type") not in ("impression", "click", "order", "item"):
        return False
    if ev["type"] == "item":
        return isinstance(ev.get("item_id"), str)
    base = all(isinstance(ev.get(k), str) and ev.get(k) for k in ("event_id", "request_id")) and (
        type(ev.get("ts_ms")) is int and isinstance(ev.get("user_id"), str)
    )
    if not base:
        return False
    if ev["type"] == "impression":
        items = ev.get("items")
        return (
            isinstance(ev.get("query"), str)
            and isinstance(items, list)
            and bool(items)
            and all(
                isinstance(i, dict)
                and isinstance(i.get("item_id"), str)
                and type(i.get("position")) is int
                and i["position"] >= 1
                and "rel_tier" in i
                for i in items
            )
        )
    return isinstance(ev.get("item_id"), str) and bool(ev["item_id"])
