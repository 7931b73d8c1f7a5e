"""Where simulated events go: a JSON-lines file, or Kafka at a given rate; and the ground truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from streamrl.sim.simulate import Request, Simulator
from streamrl.sim.world import World


class TruthWriter:
    """`--truth DIR`: catalog, queries, users, the relevance table for the queries in play, and the
    held-out requests (generated like the others, never emitted)."""

    def __init__(self, world: World, root: Path, all_queries: bool = False) -> None:
        """`all_queries`: the relevance table lists every query of the world, not only those in
        play (what a learner scoring live traffic after this needs)."""
        self.world = world
        self.root = root
        self.all_queries = all_queries
        self.heldout: list[dict[str, Any]] = []
        self.queries_in_play: set[int] = set()
        self._qindex = {q.text: i for i, q in enumerate(world.queries)}

    def on_request(self, req: Request) -> None:
        self.queries_in_play.add(self._qindex[req.query.text])
        if req.heldout:
            clicked = {it.item_id for it, _ in req.clicks}
            ordered = {it.item_id for it, _, _ in req.orders}
            self.heldout.append(
                {
                    "request_id": req.request_id,
                    "user_id": req.user.user_id,
                    "query": req.query.text,
                    "ts_ms": req.ts_ms,
                    "items": [
                        {
                            "item_id": it.item_id,
                            "position": p,
                            "rel_tier": t,
                            "clicked": it.item_id in clicked,
                            "ordered": it.item_id in ordered,
                        }
                        for p, (it, t) in enumerate(zip(req.shown, req.tiers, strict=True), 1)
                    ],
                }
            )

    def write(self) -> None:
        w, root = self.world, self.root
        root.mkdir(parents=True, exist_ok=True)
        _jsonl(
            root / "catalog.jsonl",
            (
                {
                    "item_id": it.item_id,
                    "title": it.title,
                    "category": list(it.category),
                    "attrs": it.attrs,
                    "merchant_id": it.merchant_id,
                    "new_merchant": it.merchant_id in w.new_merchants,
                    "popularity": it.popularity,
                }
                for it in w.items
            ),
        )
        _jsonl(
            root / "queries.jsonl",
            (
                {
                    "query": q.text,
                    "category": list(q.category),
                    "attrs": q.attrs,
                    "negated": list(q.negated) if q.negated else None,
                    "weight": q.weight,
                }
                for q in w.queries
            ),
        )
        _jsonl(
            root / "users.jsonl",
            (
                {"user_id": u.user_id, "favoured": list(u.favoured), "liked": u.liked, "weight": u.weight}
                for u in w.users
            ),
        )
        _jsonl(root / "heldout.jsonl", iter(self.heldout))
        queries, items, tiers = [], [], []
        for qi in range(len(w.queries)) if self.all_queries else sorted(self.queries_in_play):
            q = w.queries[qi]
            for it in w.items:
                t = w.tier(q, it)
                if t > 0:  # tier 0 for every pair not listed
                    queries.append(q.text)
                    items.append(it.item_id)
                    tiers.append(t)
        pq.write_table(
            pa.table({"query": queries, "item_id": items, "tier": pa.array(tiers, pa.int8())}),
            root / "relevance.parquet",
        )


def _jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")


def to_file(
    sim: Simulator,
    requests: int,
    out: Path,
    truth: TruthWriter | None,
    on_request: Callable[[Request], None] | None = None,
) -> int:
    n = 0
    with open(out, "wb") as fh:
        for _, raw in sim.events(requests, on_request or (truth.on_request if truth else None)):
            fh.write(raw + b"\n")
            n += 1
    if truth:
        truth.write()
    return n


def to_kafka(
    sim: Simulator,
    requests: int,
    producer: Any,
    topics: Any,
    rate: float,
    duration_s: float | None,
    truth: TruthWriter | None,
    on_request: Callable[[Request], None] | None = None,
) -> tuple[int, float]:
    """Produce at `rate` events/s of wall time (paced in batches); returns (events, achieved rate)."""
    from streamrl.stream.kafka_io import produce_events

    start = time.monotonic()
    n = 0
    batch: list[bytes] = []
    step = max(1, int(rate / 50))  # ~50 batches a second
    for _, raw in sim.events(requests, on_request or (truth.on_request if truth else None)):
        batch.append(raw)
        if len(batch) >= step:
            n += produce_events(producer, topics, batch)
            batch = []
            ahead = n / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            if duration_s is not None and time.monotonic() - start >= duration_s:
                break
    n += produce_events(producer, topics, batch)
    producer.flush()
    if truth:
        truth.write()
    return n, n / max(time.monotonic() - start, 1e-9)
