"""Search traffic from a `World`: a logging ranker (or a served model, closed loop) shows items, a
position-biased click model scaled by relevance and user preference clicks them, orders follow
clicks. Events come out in the contract's JSON, in arrival order, deterministic for a seed.

Click model (after the ESCI-derived model of OpenSearch's event generator):
    P(click) = examination(pos) * click_by_tier[tier] * (1 + preference_boost * favoured)
               * (1 + preference_boost / 2 * liked)
    favoured: the item is in one of the user's preferred top categories; liked: it has the user's
    preferred brand or colour.
    examination(pos) = ln(6.7) / ln(4 * pos + 2.7)          (1 at position 1, decaying)
Click delays are log-uniform in `click_delay_s`. Order delays after the click are drawn from the real
click → order gaps of the OTTO sample sessions (../shared/data/otto, CC BY 4.0: 64, 257, 462, 526
and 546 s, the ones inside a 10-minute window) times U(0.8, 1.2). `behaviour.delay_scale` multiplies
both delays (1 = real time; the demo compresses them so a loop turns in minutes).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamrl.sim.world import Item, Query, User, World

OTTO_ORDER_GAPS_S = (63.76, 256.559, 462.312, 525.574, 546.483)
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: event time starts here unless told otherwise

# A ranker maps (user, query, history item_ids, k) to item_ids in display order, or None to decline
# (the closed loop's serving endpoint declines until a model is served).
Ranker = Callable[[User, Query, list[str], int], list[str] | None]


def _draw(cdf: np.ndarray, u: float) -> int:
    """Index drawn with probabilities given by a cumulative (unnormalised) weight array."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)


def examination(pos: int) -> float:
    return math.log(6.7) / math.log(4 * pos + 2.7)


@dataclass
class Request:
    request_id: str
    user: User
    query: Query
    ts_ms: int
    shown: list[Item]
    tiers: list[int]
    clicks: list[tuple[Item, int]]
    orders: list[tuple[Item, int, float]]
    heldout: bool
    served: bool
    arm: str = ""  # the online A/B arm of the user (sim/closed_loop.py `ArmRanker`); "" = no A/B


class Simulator:
    def __init__(
        self, world: World, seed: int | None = None, start_ms: int = START_MS, ranker: Ranker | None = None
    ) -> None:
        self.world = world
        self.b = world.cfg.behaviour
        self.rng = np.random.default_rng([world.cfg.seed, seed if seed is not None else 0])
        self.start_ms = start_ms
        self.ranker = ranker
        self._pools: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._user_w = np.array([u.weight for u in world.users])
        self._user_w /= self._user_w.sum()
        self._query_w = np.array([q.weight for q in world.queries])
        self._query_w /= self._query_w.sum()
        self._by_top_queries: dict[str, list[int]] = {}
        for i, q in enumerate(world.queries):
            self._by_top_queries.setdefault(q.category[0], []).append(i)
        self._index = {it.item_id: i for i, it in enumerate(world.items)}
        self._user_cdf = np.cumsum(self._user_w)
        self._query_cdf = np.cumsum(self._query_w)
        self._favoured_cdf: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._history: dict[str, list[str]] = {}

    def _pool(self, qi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate items of a query (its top category, plus a few others), their tiers and
        log-popularity."""
        if qi not in self._pools:
            q = self.world.queries[qi]
            idx = self.world.pools.get(q.text) or list(self.world.by_top.get(q.category[0], []))
            extra = np.random.default_rng([self.world.cfg.seed, 99, qi]).choice(
                len(self.world.items), size=min(50, len(self.world.items)), replace=False
            )
            pool = np.array(sorted(set(idx) | set(extra.tolist())))
            tiers = np.array([self.world.tier(q, self.world.items[i]) for i in pool])
            log_pop = np.log(np.array([self.world.items[i].popularity for i in pool]) * len(self.world.items))
            self._pools[qi] = (pool, tiers, log_pop)
        return self._pools[qi]

    def _choose(self) -> tuple[User, int]:
        w = self.world
        user = w.users[_draw(self._user_cdf, self.rng.random())]
        if user.user_id not in self._favoured_cdf:
            favoured = np.array(
                [i for t in user.favoured for i in self._by_top_queries.get(t, [])], dtype=np.int64
            )
            self._favoured_cdf[user.user_id] = (favoured, np.cumsum(self._query_w[favoured]))
        favoured, cdf = self._favoured_cdf[user.user_id]
        if len(favoured) and self.rng.random() < w.cfg.users.preference_strength:
            return user, int(favoured[_draw(cdf, self.rng.random())])
        return user, _draw(self._query_cdf, self.rng.random())

    def logging_ranker(self, qi: int, k: int) -> list[int]:
        pool, tiers, log_pop = self._pool(qi)
        r = self.b.ranker
        score = r.relevance * tiers + r.popularity * log_pop + r.noise * self.rng.standard_normal(len(pool))
        return [int(pool[j]) for j in np.argsort(-score, kind="stable")[:k]]

    def request(self, i: int, ts_ms: int) -> Request:
        user, qi = self._choose()
        q = self.world.queries[qi]
        k = self.b.page_size
        shown_idx: list[int] | None = None
        served = False
        arm = ""
        if self.ranker is not None:
            ids = self.ranker(user, q, self._history.get(user.user_id, [])[:20], k)
            arm = getattr(self.ranker, "last_arm", "")  # an A/B ranker names the user's arm
            if ids:
                shown_idx = [self._index[x] for x in dict.fromkeys(ids) if x in self._index][:k]
                served = bool(shown_idx)
        if not shown_idx:
            shown_idx = self.logging_ranker(qi, k)
        shown = [self.world.items[j] for j in shown_idx]
        tiers = [self.world.tier(q, it) for it in shown]
        clicks, orders = [], []
        lo, hi = self.b.click_delay_s
        for pos, (it, tier) in enumerate(zip(shown, tiers, strict=True), start=1):
            p = examination(pos) * self.b.click_by_tier[tier]
            if it.category[0] in user.favoured:
                p *= 1 + self.b.preference_boost
            if any(it.attrs.get(a) == v for a, v in user.liked.items()):
                p *= 1 + self.b.preference_boost / 2
            if self.rng.random() < min(p, 1.0):
                delay_s = math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
                c_ts = ts_ms + int(1000 * delay_s * self.b.delay_scale)
                clicks.append((it, c_ts))
                if self.rng.random() < self.b.order_given_click[tier]:
                    gap = OTTO_ORDER_GAPS_S[int(self.rng.integers(len(OTTO_ORDER_GAPS_S)))]
                    o_ts = c_ts + int(1000 * gap * self.rng.uniform(0.8, 1.2) * self.b.delay_scale)
                    orders.append((it, o_ts, round(float(self.rng.uniform(5, 300)), 2)))
        heldout = bool(self.rng.random() < self.b.heldout_share)
        if not heldout and clicks:
            hist = self._history.setdefault(user.user_id, [])
            hist[:0] = [it.item_id for it, _ in reversed(clicks) if it.item_id not in hist]
            del hist[40:]
        return Request(
            f"s{self.world.cfg.seed}-{i}", user, q, ts_ms, shown, tiers, clicks, orders, heldout, served, arm
        )

    def item_events(self) -> Iterator[bytes]:
        for it in self.world.items:
            yield orjson.dumps(
                {
                    "type": "item",
                    "item_id": it.item_id,
                    "ts_ms": self.start_ms,
                    "title": it.title,
                    "category": list(it.category),
                    "merchant_id": it.merchant_id,
                    "attrs": it.attrs,
                }
            )

    def events(
        self, requests: int, on_request: Callable[[Request], None] | None = None, first: int = 0
    ) -> Iterator[tuple[int, bytes]]:
        """(arrival_ms, event) for item events, then `requests` requests, in arrival order, numbered
        from `first` (a second call on the same simulator, e.g. live after a backlog, continues the
        numbering and the users' histories). Held-out requests go to `on_request` but not out."""
        for raw in self.item_events():
            yield self.start_ms, raw
        pending: list[tuple[int, int, bytes]] = []
        seq = 0
        gap_ms = 1000.0 / self.b.requests_per_s
        disorder_ms = int(self.b.disorder_s * 1000)
        ts = float(self.start_ms)
        for i in range(first, first + requests):
            ts += self.rng.exponential(gap_ms)
            req = self.request(i, int(ts))
            if on_request:
                on_request(req)
            if req.heldout:
                continue
            for ev in request_events(req):
                arrival = ev["ts_ms"] + int(self.rng.integers(disorder_ms + 1))
                copies = 2 if self.rng.random() < self.b.duplicate_rate else 1
                raw = orjson.dumps(ev)
                for _ in range(copies):
                    seq += 1
                    heapq.heappush(pending, (arrival, seq, raw))
            # Everything still to come arrives at or after its own ts >= this request's ts, so what
            # is due by now can go out: the stream flows in arrival order without buffering it all.
            while pending and pending[0][0] <= int(ts):
                arrival, _, raw = heapq.heappop(pending)
                yield arrival, raw
        while pending:
            arrival, _, raw = heapq.heappop(pending)
            yield arrival, raw


def request_events(req: Request) -> list[dict[str, Any]]:
    rid, uid = req.request_id, req.user.user_id
    out: list[dict[str, Any]] = [
        {
            "type": "impression",
            "event_id": f"{rid}-i",
            "request_id": rid,
            "ts_ms": req.ts_ms,
            "user_id": uid,
            "query": req.query.text,
            "items": [
                {"item_id": it.item_id, "position": p, "rel_tier": t}
                for p, (it, t) in enumerate(zip(req.shown, req.tiers, strict=True), start=1)
            ],
        }
    ]
    for it, c_ts in req.clicks:
        out.append(
            {
                "type": "click",
                "event_id": f"{rid}-c-{it.item_id}",
                "request_id": rid,
                "ts_ms": c_ts,
                "user_id": uid,
                "item_id": it.item_id,
            }
        )
    for it, o_ts, amount in req.orders:
        out.append(
            {
                "type": "order",
                "event_id": f"{rid}-o-{it.item_id}",
                "request_id": rid,
                "ts_ms": o_ts,
                "user_id": uid,
                "item_id": it.item_id,
                "amount": amount,
            }
        )
    return out
