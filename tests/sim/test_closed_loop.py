"""Closed loop over real HTTP: a stand-in for the reference server (the serving issue builds the
real one) answers POST /search; until it serves, the logging ranker shows the items."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from streamrl.sim.simulate import Simulator
from streamrl.sim.world import build_world, load_world_config

ROOT = Path(__file__).resolve().parents[2]


class _Server:
    """Answers 503 for the first `cold` requests (no model served yet), then the items a perfect
    model would return: tier-3 items of the query, from the world's truth."""

    def __init__(self, best: dict[str, list[str]], cold: int) -> None:
        self.best, self.cold, self.seen = best, cold, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.seen += 1
                if outer.seen <= outer.cold:
                    self.send_response(503)
                    self.end_headers()
                    return
                items = [
                    {"item_id": i, "sid": [], "score": 1.0}
                    for i in outer.best.get(body["query"], [])[: body["k"]]
                ]
                data = json.dumps({"version": 3, "items": items}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/search"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _simulate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    world = ["--world", str(ROOT / "configs/world.yaml"), "--out", str(tmp_path / "e.jsonl")]
    cmd = [sys.executable, "-m", "streamrl", "simulate", *world, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def world_and_best():
    world = build_world(load_world_config(ROOT / "configs/world.yaml"))
    best = {q.text: [it.item_id for it in world.items if world.tier(q, it) == 3] for q in world.queries}
    return world, best


def test_served_model_ctr_is_measured_after_fallback(tmp_path: Path, world_and_best) -> None:
    _, best = world_and_best
    server = _Server(best, cold=300)
    stats = tmp_path / "loop.jsonl"
    proc = _simulate(tmp_path, "--requests", "900", "--serving-url", server.url, "--loop-stats", str(stats))
    server.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert totals["logging ranker"]["requests"] >= 280  # before a model was served
    assert totals["served v3"]["requests"] > 400
    # the perfect model shows exact items, so its CTR beats the noisy logging ranker's
    assert totals["served v3"]["ctr"] > totals["logging ranker"]["ctr"] * 1.3
    rows = [json.loads(x) for x in stats.read_text().splitlines()]
    assert {r["ranker"] for r in rows} == {"logging ranker", "served v3"}


def test_unreachable_endpoint_falls_back(world_and_best) -> None:
    from streamrl.sim.closed_loop import HttpRanker

    world, _ = world_and_best
    ranker = HttpRanker("http://127.0.0.1:9/search", timeout_s=0.5)
    sim = Simulator(world, 1, ranker=ranker)
    reqs = [sim.request(i, 1_767_225_600_000 + i) for i in range(5)]
    assert not any(r.served for r in reqs) and all(len(r.shown) == 10 for r in reqs)
    assert ranker.errors == 5


def test_impressions_in_the_loop_are_valid_events(tmp_path: Path, world_and_best) -> None:
    from streamrl.stream.events import decode_event

    world, best = world_and_best
    server = _Server(best, cold=0)
    from streamrl.sim.closed_loop import HttpRanker

    sim = Simulator(world, 2, ranker=HttpRanker(server.url))
    lines = [raw for _, raw in sim.events(50)]
    server.httpd.shutdown()
    for raw in lines:
        decode_event(raw)
    imps = [orjson.loads(x) for x in lines if b'"impression"' in x]
    served = [i for i in imps if all(it["rel_tier"] == 3 for it in i["items"])]
    assert len(served) > len(imps) // 2


def test_the_intervals_are_the_delta_method_over_users_by_hand() -> None:
    from streamrl.sim.closed_loop import Cell

    c = Cell()
    for user, shown, clicks, orders in (("a", 10, 2, 1), ("b", 10, 0, 0), ("c", 10, 1, 0), ("d", 10, 3, 1)):
        c.add(user, shown, clicks, orders)
    s = c.summary()
    # ctr = 6 / 40 = 0.15; residuals c_u - 0.15 s_u = 0.5, -1.5, -0.5, 1.5: squares sum 5.0
    # var = 5.0 / (4 * 3 * 10^2) = 0.0041667; half width 1.96 * 0.064550 = 0.126518
    assert s["ctr"] == pytest.approx(0.15) and s["requests"] == 4 and s["users"] == 4
    assert s["ctr_ci95"] == pytest.approx([0.15 - 0.126518, 0.15 + 0.126518], abs=1e-5)
    # orders per request 0.5; residuals 0.5, -0.5, -0.5, 0.5: squares 1.0; var 1 / (4 * 3 * 1) = 1/12
    assert s["orders_per_request"] == 0.5
    assert s["orders_per_request_ci95"] == pytest.approx([0.5 - 0.565803, 0.5 + 0.565803], abs=1e-5)
    # user "a" searches again (10 shown, 3 clicks, 0 orders): one cluster of 2 requests, 20 shown
    c.add("a", 10, 3, 0)
    s = c.summary()
    # ctr = 9 / 50 = 0.18; residuals a: 5 - 3.6 = 1.4, b: -1.8, c: -0.8, d: 1.2 -> squares 1.96 + 3.24
    # + 0.64 + 1.44 = 7.28; s̄ = 12.5; var = 7.28 / (4 * 3 * 156.25) = 0.0038827; half 1.96 * 0.062311
    assert s["requests"] == 5 and s["users"] == 4 and s["ctr"] == pytest.approx(0.18)
    assert s["ctr_ci95"] == pytest.approx([0.18 - 0.122130, 0.18 + 0.122130], abs=1e-5)
    one = Cell()
    one.add("a", 10, 1, 0)
    one.add("a", 10, 2, 0)
    assert one.summary()["ctr_ci95"] is None  # one user: no interval (JSON null)


def test_users_split_stably_and_evenly_over_the_arms() -> None:
    from streamrl.sim.closed_loop import arm_of

    arms = ["logging", "frozen", "live"]
    got = [arm_of(f"u{n}", arms) for n in range(3000)]
    assert got == [arm_of(f"u{n}", arms) for n in range(3000)]  # stable
    for a in arms:
        assert 900 < got.count(a) < 1100  # even: 1000 ± ~3.3 standard deviations
    other = [arm_of(f"u{n}", arms, salt="another-experiment") for n in range(3000)]
    assert 0.5 < sum(a != b for a, b in zip(got, other, strict=True)) / 3000 < 0.8  # re-split: ~2/3 move


def test_online_ab_reports_three_arms_with_intervals(tmp_path: Path, world_and_best) -> None:
    world, best = world_and_best
    worst = {q.text: [it.item_id for it in world.items if world.tier(q, it) == 0] for q in world.queries}
    good, bad = _Server(best, cold=0), _Server(worst, cold=30)
    stats = tmp_path / "loop.jsonl"
    arms = ["--arm", f"live={good.url}", "--arm", f"frozen={bad.url}"]
    proc = _simulate(tmp_path, "--requests", "900", *arms, "--loop-stats", str(stats))
    good.httpd.shutdown()
    bad.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(totals) == {"logging", "frozen", "live", "frozen (fallback)"}
    assert totals["frozen (fallback)"]["requests"] == 30  # declined while "nothing was served"
    assert sum(t["requests"] for t in totals.values()) == 900
    for arm in ("logging", "frozen", "live"):
        lo, hi = totals[arm]["ctr_ci95"]
        assert totals[arm]["requests"] > 200 and lo < totals[arm]["ctr"] < hi
    # tier-3 items beat the logging ranker, tier-0 items lose to it, beyond the intervals
    assert totals["live"]["ctr_ci95"][0] > totals["logging"]["ctr_ci95"][1]
    assert totals["frozen"]["ctr_ci95"][1] < totals["logging"]["ctr_ci95"][0]
    rows = [json.loads(x) for x in stats.read_text().splitlines()]
    assert {"logging", "frozen", "live"} <= {r["ranker"] for r in rows}
    assert all("ctr_ci95" in r for r in rows)
    bad_arg = _simulate(tmp_path, "--arm", "logging=http://x")
    assert bad_arg.returncode == 2
