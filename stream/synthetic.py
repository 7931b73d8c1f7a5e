"""A small seeded generator of contract events, with the disorder and faults a real log has.

It stands in for the simulated search world (its own issue) wherever the join needs traffic: the
tests, bench/join_throughput.py and the stage-1 demo. Events come out in *arrival* order: each is
delayed by up to `disorder_ms` after its event time, so the stream is out of order within a bound.
Faults, each at its own rate: duplicate deliveries (same event_id), orphans (a click whose
impression never comes), clicks on items not impressed, late clicks (beyond window + lateness), and
malformed lines.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class SynthSpec:
    requests: int = 1000
    seed: int = 0
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    rate_per_s: float = 50.0  # requests per second of event time
    users: int = 200
    items: int = 2000
    queries: int = 100
    per_page: int = 10
    click_p1: float = 0.35  # click probability at position 1, decaying 1/pos^0.7
    order_p: float = 0.15  # order probability given a click
    disorder_ms: int = 10_000  # arrival delay bound; keep below allowed_lateness
    dup_rate: float = 0.0
    orphan_rate: float = 0.0
    not_impressed_rate: float = 0.0
    late_rate: float = 0.0
    malformed_rate: float = 0.0
    window_ms: int = 600_000
    click_delay_ms: int = 120_000  # clicks come 0.5 s .. this after the impression
    order_delay_ms: int = 400_000  # orders come 10 s .. this after the click (within the window)


def _request_events(spec: SynthSpec, rng: random.Random, i: int) -> list[dict[str, Any]]:
    ts = spec.start_ms + int(i * 1000 / spec.rate_per_s)
    rid, user = f"r{spec.seed}-{i}", f"u{rng.randrange(spec.users)}"
    q = rng.randrange(spec.queries)
    items = rng.sample(range(spec.items), spec.per_page)
    imp = {
        "type": "impression",
        "event_id": f"{rid}-i",
        "request_id": rid,
        "ts_ms": ts,
        "user_id": user,
        "query": f"query {q}",
        "items": [
            {"item_id": f"item{it}", "position": p + 1, "rel_tier": rng.choice((0, 1, 2, 3, None))}
            for p, it in enumerate(items)
        ],
        "keywords": [f"kw{q}"],
    }
    out = [imp]
    for p, it in enumerate(items):
        if rng.random() < spec.click_p1 / (p + 1) ** 0.7:
            c_ts = ts + rng.randrange(500, max(501, spec.click_delay_ms))
            out.append(
                {
                    "type": "click",
                    "event_id": f"{rid}-c{p}",
                    "request_id": rid,
                    "ts_ms": c_ts,
                    "user_id": user,
                    "item_id": f"item{it}",
                }
            )
            if rng.random() < spec.order_p:
                o_ts = c_ts + rng.randrange(min(10_000, spec.order_delay_ms // 2), spec.order_delay_ms)
                if o_ts - ts <= spec.window_ms:
                    out.append(
                        {
                            "type": "order",
                            "event_id": f"{rid}-o{p}",
                            "request_id": rid,
                            "ts_ms": o_ts,
                            "user_id": user,
                            "item_id": f"item{it}",
                            "amount": round(rng.uniform(5, 200), 2),
                        }
                    )
    if rng.random() < spec.not_impressed_rate:
        out.append(
            {
                "type": "click",
                "event_id": f"{rid}-x",
                "request_id": rid,
                "ts_ms": ts + 2000,
                "user_id": user,
                "item_id": "item-not-shown",
            }
        )
    if rng.random() < spec.late_rate:  # in the window, but delivered long after it closed
        out.append(
            {
                "type": "click",
                "event_id": f"{rid}-late",
                "request_id": rid,
                "ts_ms": ts + 1_000,
                "user_id": user,
                "item_id": f"item{items[-1]}",
                "_arrival_ms": ts + 2 * spec.window_ms + 60_000,
            }
        )
    if rng.random() < spec.orphan_rate:
        out.append(
            {
                "type": "click",
                "event_id": f"{rid}-orphan",
                "request_id": f"{rid}-lost",
                "ts_ms": ts + 1000,
                "user_id": user,
                "item_id": f"item{items[0]}",
            }
        )
    return out


def generate(spec: SynthSpec) -> Iterator[tuple[int, bytes]]:
    """(arrival_ms, encoded event) in arrival order. Deterministic for a spec."""
    rng = random.Random(spec.seed)
    pending: list[tuple[int, int, bytes]] = []
    seq = 0
    import heapq

    for i in range(spec.requests):
        now = spec.start_ms + int(i * 1000 / spec.rate_per_s)
        for ev in _request_events(spec, rng, i):
            arrival = ev.pop("_arrival_ms", None) or ev["ts_ms"] + rng.randrange(spec.disorder_ms + 1)
            raw = orjson.dumps(ev)
            copies = 2 if rng.random() < spec.dup_rate else 1
            for _ in range(copies):
                seq += 1
                heapq.heappush(pending, (arrival, seq, raw))
        if rng.random() < spec.malformed_rate:
            seq += 1
            bad = rng.choice(
                [
                    b'{"type":"click","event_id":7}',
                    b"not json at all",
                    b'{"type":"impression","event_id":"m","request_id":"m"}',
                ]
            )
            heapq.heappush(pending, (now, seq, bad))
        while pending and pending[0][0] <= now:  # all that is still to come arrives after now
            arrival, _, raw = heapq.heappop(pending)
            yield arrival, raw
    while pending:
        arrival, _, raw = heapq.heappop(pending)
        yield arrival, raw


def write_jsonl(spec: SynthSpec, path: str) -> int:
    n = 0
    with open(path, "wb") as fh:
        for _, raw in generate(spec):
            fh.write(raw + b"\n")
            n += 1
    return n
