"""The closed loop: impressions from a serving endpoint instead of the logging ranker.

`HttpRanker` asks `POST {url}` with {"query", "user_id", "history", "k"} (the reference server's
contract, checkpoints/serving issue) and shows the returned item_ids in order. Until a model is
served — connection refused, a non-200 answer, no items — it declines and the simulator falls back to
its logging ranker. `LoopStats` measures what an online A/B test would: CTR (clicked impressed items /
impressed items) and order rate per request, split by who ranked (served version or the logging
ranker), per window of event time.

The online A/B (`ArmRanker`): users are split by a stable hash of user_id into `logging` (the
engine's ranker) and named model arms, each served by its own endpoint (`frozen`: the warm-start
model pinned; `live`: the daemon's newest push). A user stays in one arm for the whole run. A model
arm whose endpoint declines (nothing served yet) falls back to the logging ranker, and those
requests are counted apart (`<arm> (fallback)`), never as the arm's.

Confidence intervals (95 %): users are what the A/B randomises, and a user's requests (and the
items within a request) are correlated, so both figures are ratios of sums over users with the
delta-method (cluster) variance
    var(ctr) = Σ_u (c_u − ctr·s_u)² / (U (U − 1) s̄²)     (c_u clicks, s_u shown items of user u, U users);
orders per request likewise with (orders_u, requests_u). Interval = estimate ± 1.96·√var.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from streamrl.sim.simulate import Request
from streamrl.sim.world import Query, User


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


def arm_of(user_id: str, arms: Sequence[str], salt: str = "ab") -> str:
    """A stable, even split of users over `arms` (blake2b of salt and user_id)."""
    h = int.from_bytes(hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest(), "little")
    return arms[h % len(arms)]


class ArmRanker:
    """The online A/B: `logging` declines (the simulator's own ranker shows the items); every other
    arm asks its endpoint. After each call `last_arm` names the arm the user is in (the simulator
    copies it onto the request)."""

    def __init__(self, urls: dict[str, str], timeout_s: float = 2.0, salt: str = "ab") -> None:
        self.arms = ["logging", *urls]
        self.rankers = {name: HttpRanker(url, timeout_s) for name, url in urls.items()}
        self.salt = salt
        self.last_arm = "logging"

    def __call__(self, user: User, query: Query, history: list[str], k: int) -> list[str] | None:
        self.last_arm = arm_of(user.user_id, self.arms, self.salt)
        ranker = self.rankers.get(self.last_arm)
        return ranker(user, query, history, k) if ranker else None


def who_ranked(req: Request, ranker: Any) -> str:
    """The arm of an A/B request (fallbacks apart), else served version or logging ranker."""
    if req.arm:
        return req.arm if req.served or req.arm == "logging" else f"{req.arm} (fallback)"
    return f"served v{ranker.version}" if req.served and ranker is not None else "logging ranker"


class Cell:
    """Sums per user over the requests of one arm (and window): users are the unit the A/B
    randomises, so they are the clusters of the intervals."""

    def __init__(self) -> None:
        self.users: dict[str, list[int]] = defaultdict(
            lambda: [0, 0, 0, 0]
        )  # requests, shown, clicks, orders

    def add(self, user: str, shown: int, clicks: int, orders: int) -> None:
        u = self.users[user]
        u[0] += 1
        u[1] += shown
        u[2] += clicks
        u[3] += orders

    def merge(self, other: Cell) -> None:
        for user, sums in other.users.items():
            mine = self.users[user]
            for k in range(4):
                mine[k] += sums[k]

    def summary(self) -> dict[str, Any]:
        U = len(self.users)
        n, shown, clicks, orders = (sum(u[k] for u in self.users.values()) for k in range(4))
        ctr = clicks / max(shown, 1)
        opr = orders / max(n, 1)
        out: dict[str, Any] = {"requests": n, "users": U, "ctr": ctr, "ctr_ci95": None,
                               "orders_per_request": opr, "orders_per_request_ci95": None}  # fmt: skip
        if U > 1 and shown:  # fewer than two users: no interval (null in JSON, never Infinity)
            out["ctr_ci95"] = _ratio_ci(ctr, [(u[2], u[1]) for u in self.users.values()])
            out["orders_per_request_ci95"] = _ratio_ci(opr, [(u[3], u[0]) for u in self.users.values()])
        return out


def _ratio_ci(r: float, clusters: list[tuple[int, int]]) -> list[float]:
    """95 % interval of r = Σy/Σx by the delta method over clusters (y_u, x_u):
    var = Σ (y_u − r x_u)² / (U (U − 1) x̄²)."""
    U = len(clusters)
    x_bar = sum(x for _, x in clusters) / U
    resid = sum((y - r * x) ** 2 for y, x in clusters)
    half = 1.96 * math.sqrt(resid / (U * (U - 1) * x_bar * x_bar))
    return [r - half, r + half]


def ci_text(ci: list[float] | None, digits: int = 4) -> str:
    """`[lo, hi]`, or `—` where there is no interval yet."""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "—"


class LoopStats:
    """Per window of event time and per arm (or ranker): requests, CTR and orders per request, with
    95 % confidence intervals."""

    def __init__(self, ranker: Any, window_s: float = 60.0) -> None:
        self.ranker = ranker
        self.window_ms = int(window_s * 1000)
        self.cells: dict[tuple[int, str], Cell] = defaultdict(Cell)

    def on_request(self, req: Request) -> None:
        who = who_ranked(req, self.ranker)
        self.cells[(req.ts_ms // self.window_ms * self.window_ms, who)].add(
            req.user.user_id, len(req.shown), len(req.clicks), len(req.orders)
        )

    def rows(self) -> list[dict[str, Any]]:
        return [{"window_ms": w, "ranker": who, **c.summary()} for (w, who), c in sorted(self.cells.items())]

    def totals(self) -> dict[str, dict[str, Any]]:
        agg: dict[str, Cell] = defaultdict(Cell)
        for (_, who), c in self.cells.items():
            agg[who].merge(c)
        return {who: c.summary() for who, c in sorted(agg.items())}
