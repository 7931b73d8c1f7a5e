"""The closed loop: impressions from a serving endpoint instead of the logging ranker.

`HttpRanker` asks `POST {url}` with {"query", "user_id", "history", "k"} (the reference server's
contract, checkpoints/serving issue) and shows the returned item_ids in order. Until a model is
served — connection refused, a non-200 answer, no items — it declines and the simulator falls back to
its logging ranker. `LoopStats` measures what an online A/B test would: CTR (clicked impressed items /
impressed items) and order rate per request, split by who ranked (served version or the logging
ranker), per window of event time.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from sim.simulate import Request
from sim.world import Query, User


class HttpRanker:
    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.version: Any = None
        self.errors = 0

    def __call__(self, user: User, query: Query, history: list[str], k: int) -> list[str] | None:
        body = json.dumps({"query": query.text, "user_id": user.user_id, "history": history, "k": k}).encode()
        req = urllib.request.Request(
            self.url, data=body, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                answer = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            self.errors += 1
            self.version = None
            return None
        items = answer.get("items") if isinstance(answer, dict) else None
        if not items:
            self.version = None
            return None
        self.version = answer.get("version")
        return [str(it["item_id"]) for it in items if isinstance(it, dict) and "item_id" in it]


class LoopStats:
    """Per window of event time and per ranker: requests, impressed items, clicks, orders."""

    def __init__(self, ranker: HttpRanker | None, window_s: float = 60.0) -> None:
        self.ranker = ranker
        self.window_ms = int(window_s * 1000)
        self.cells: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def on_request(self, req: Request) -> None:
        who = f"served v{self.ranker.version}" if req.served and self.ranker else "logging ranker"
        cell = self.cells[(req.ts_ms // self.window_ms * self.window_ms, who)]
        cell[0] += 1
        cell[1] += len(req.shown)
        cell[2] += len(req.clicks)
        cell[3] += len(req.orders)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "window_ms": w,
                "ranker": who,
                "requests": c[0],
                "ctr": c[2] / max(c[1], 1),
                "orders_per_request": c[3] / max(c[0], 1),
            }
            for (w, who), c in sorted(self.cells.items())
        ]

    def totals(self) -> dict[str, dict[str, float]]:
        agg: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for (_, who), c in self.cells.items():
            agg[who] = [a + b for a, b in zip(agg[who], c, strict=True)]
        return {
            who: {"requests": c[0], "ctr": c[2] / max(c[1], 1), "orders_per_request": c[3] / max(c[0], 1)}
            for who, c in agg.items()
        }
