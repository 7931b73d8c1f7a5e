"""`streamrl demo` (= `make run`): the whole loop on one machine, closed, with an online A/B.

1. a local Kafka-protocol broker (Tansu) on loopback, topics created;
2. the simulated world (configs/world.yaml) and its semantic IDs (MiniLM by default);
3. a backlog: the engine's own history, `backlog_s` seconds of traffic ranked by the logging ranker
   (event time just before now), joined by the same join (`stream.replay`) into reward records;
4. the daemon (`streamrl run`: joiner + learner) warm starts on that backlog (SFT, `learn.warm_start`),
   pushes the result through the gate as version 1, then learns RL (TPMA-GRPO, anchored) live, with
   scheduled checkpoints and pushes; the learner's relevance source is the world's relevance table
   (standing in for the paper's relevance model);
5. two reference servers (`streamrl serve`): `live` follows the daemon's pushes; `frozen` serves
   version 1 (the warm start) for the whole run;
6. once version 1 is served, simulated traffic in real time, split by user into three arms —
   `logging` (the engine's ranker), `frozen`, `live` — with clicks and orders from the world's
   ground truth: an online A/B test of what RL adds;
7. a live panel; on exit (duration or Ctrl-C) everything started is stopped (SIGTERM, drained), the
   A/B table is printed and written (ab.json), and a PNG report: learner reward, held-out HR@10 per
   push, CTR of each arm over time, pushes marked.
`duration` is the whole run's wall time, set-up and warm start included (drain and report after).
Exit 0 when the daemon drained cleanly and at least one version was pushed and served.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live

from streamrl.checkpoints.serving import ServingRoot
from streamrl.configs import load_config
from streamrl.configs.schema import StreamrlConfig
from streamrl.demo_view import ARMS, ab_table, write_report
from streamrl.demo_view import panel as draw_panel
from streamrl.sim.closed_loop import ArmRanker, Cell, who_ranked
from streamrl.sim.output import TruthWriter, to_file
from streamrl.sim.simulate import Request, Simulator
from streamrl.sim.world import World, build_world, load_world_config
from streamrl.stream import kafka_io
from streamrl.stream.broker import LocalBroker
from streamrl.stream.replay import replay

WORLD = Path(__file__).parent / "configs" / "world.yaml"  # streamrl/configs: installed or linked
FIRST_PUSH_GRACE_S = 120.0  # a --duration that ends before the first push waits this long for it
BACKLOG_S = 300.0  # event-time seconds of logged history before the demo goes live (6,000 requests)

# Short windows and cadences so the loop turns within minutes (production defaults are in schema.py).
# The demo's world compresses click and order delays 25x (OTTO's 64-546 s order gaps become 2.6-22 s)
# and keeps arrival disorder at 2 s, so a 25 s join window sees the orders and records finalise soon.
DEMO_DELAY_SCALE = 0.04
DEMO_DISORDER_S = 2.0
DEMO_SETS = [
    # SFT was still improving at 450 steps in bench/learning.py: a longer warm start (~70 s here)
    "learn.warm_start.steps=800",
    "join.window_s=25",
    "join.allowed_lateness_s=3",
    "join.idle_finalize_s=5",
    "join.orphan_ttl_s=10",
    "joiner.commit_interval_s=1",
    "archive.roll_s=10",
    "kafka.session_timeout_ms=6000",
    "kafka.heartbeat_interval_ms=1000",
    "checkpoint.every_steps=40",
    "checkpoint.every_s=5",
    "push.every_s=20",
    "push.max_regression=0.05",
    "push.eval_records=100",
    "push.eval_beam=10",
    "serving.beam=16",
    "serving.poll_s=0.5",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_sids(world: World, out: Path, encoder: str) -> None:
    from streamrl.rl.encoders import load_encoder
    from streamrl.rl.sid import CatalogItem, SidCodebook, save_codebook

    catalog = {
        it.item_id: CatalogItem(it.item_id, it.title, tuple(it.category), it.merchant_id, dict(it.attrs))
        for it in world.items
    }
    ids = sorted(catalog)
    enc = load_encoder(encoder)
    book = SidCodebook((64, 16, 8), (2, 16)).build(ids, enc.encode([catalog[i].text() for i in ids]), seed=0)
    save_codebook(book, catalog, out, enc.name, encoder_spec=encoder)


def log_backlog(sim: Simulator, world: World, out: Path, cfg: StreamrlConfig, seconds: float) -> int:
    """Step 3: the engine's logged history (logging ranker) ending now, joined into reward records
    in out/records by the daemon's join; the world's relevance table (every query) in out/truth.
    Returns the number of requests, so live traffic continues their numbering."""
    n = int(seconds * world.cfg.behaviour.requests_per_s)
    sim.start_ms = int((time.time() - seconds) * 1000)
    out.mkdir(parents=True, exist_ok=True)
    to_file(sim, n, out / "events.jsonl", TruthWriter(world, out / "truth", all_queries=True))
    replay([out / "events.jsonl"], out / "records", cfg.join)
    return n


@dataclass
class Traffic:
    """What the simulated users saw and did, by wall time and by arm."""

    started: float = field(default_factory=time.time)
    live_from: float | None = None  # wall time the A/B traffic began
    live_until: float | None = None  # and ended
    sent: int = 0
    rows: list[tuple[float, str, str, int, int, int]] = field(
        default_factory=list
    )  # t, arm, user, shown, clicks, orders
    ranker: ArmRanker | None = None
    orders: list[tuple[str, float]] = field(default_factory=list)  # (request_id, wall time produced)

    def on_request(self, req: Request) -> None:
        arm = who_ranked(req, self.ranker)
        self.rows.append(
            (time.time(), arm, req.user.user_id, len(req.shown), len(req.clicks), len(req.orders))
        )

    def cell(self, arm: str, since_s: float | None = None) -> Cell:
        cut = time.time() - since_s if since_s is not None else 0.0
        c = Cell()
        for t, a, user, shown, clicks, orders in self.rows if since_s is None else self.rows[-6000:]:
            if a == arm and t >= cut:
                c.add(user, shown, clicks, orders)
        return c

    def ab(self) -> dict[str, dict[str, Any]]:
        """The A/B table: each arm over the whole live run (fallback requests apart)."""
        return {arm: self.cell(arm).summary() for arm in ARMS}


def _traffic(sim: Simulator, first: int, cfg: StreamrlConfig, stop: threading.Event, t: Traffic) -> None:
    producer = kafka_io.make_producer(cfg.kafka, acks=1, linger_ms=5)
    for arrival, raw in sim.events(10**9, t.on_request, first=first):
        while arrival > time.time() * 1000 and not stop.is_set():
            stop.wait(min(0.05, max(arrival / 1000 - time.time(), 0.001)))
        if stop.is_set():
            break
        kafka_io.produce_events(producer, cfg.kafka.topics, [raw])
        t.sent += 1
        if b'"type":"order"' in raw:
            t.orders.append((orjson.loads(raw)["request_id"], time.time()))
    producer.flush()
    producer.close()


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def run_demo(
    duration: float,
    out: Path,
    console: Console,
    stop: threading.Event,
    encoder: str = "minilm",
    traffic: Traffic | None = None,
    before_broker_stops: Callable[[StreamrlConfig], None] | None = None,
    world_file: Path = WORLD,
    seed: int | None = None,
    backlog_s: float = BACKLOG_S,
    panel: bool = True,
) -> int:
    for name in ("run", "serving", "weights", "archive", "sids", "backlog", "report.png", "ab.json"):
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ports = {k: free_port() for k in ("serve", "frozen", "supervisor", "joiner", "learner")}
    started = time.time()
    end = time.monotonic() + duration
    with LocalBroker(log=out / "broker.log") as broker:
        sets = [
            f"kafka.bootstrap_servers={broker.bootstrap}",
            f"archive.dir={out / 'archive'}",
            f"learn.run_dir={out / 'run'}",
            f"learn.sids_dir={out / 'sids'}",
            f"learn.warm_start.records={out / 'backlog' / 'records'}",
            "learn.relevance.source=table",
            f"learn.relevance.path={out / 'backlog' / 'truth' / 'relevance.parquet'}",
            f"serving.root={out / 'serving'}",
            f"serving.port={ports['serve']}",
            f"push.notify_url=http://127.0.0.1:{ports['serve']}/reload",
            f"weights.dir={out / 'weights'}",
            f"metrics.supervisor_port={ports['supervisor']}",
            f"metrics.joiner_port={ports['joiner']}",
            f"metrics.learner_port={ports['learner']}",
            *DEMO_SETS,
        ]
        cfg = load_config(overrides=sets)
        t = cfg.kafka.topics
        kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items, t.rewards, t.dlq])
        wcfg = load_world_config(world_file, seed)
        behaviour = wcfg.behaviour.model_copy(
            update={"delay_scale": DEMO_DELAY_SCALE, "disorder_s": DEMO_DISORDER_S}
        )
        world = build_world(wcfg.model_copy(update={"behaviour": behaviour}))
        console.print(
            f"broker on {broker.bootstrap}; building semantic IDs of {len(world.items)} items ({encoder})"
        )
        build_sids(world, out / "sids", encoder)
        sim = Simulator(world, wcfg.seed)
        first = log_backlog(sim, world, out / "backlog", cfg, backlog_s)
        console.print(f"backlog: {first} requests ranked by the logging ranker, joined into reward records")
        args = [x for o in sets for x in ("--set", o)]
        (out / "demo-overrides.txt").write_text("\n".join(sets) + "\n")
        with open(out / "daemon.log", "wb") as dlog, open(out / "serve.log", "wb") as slog:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "streamrl", "run", *args], stdout=dlog, stderr=dlog
            )
            server = subprocess.Popen(
                [sys.executable, "-m", "streamrl", "serve", *args], stdout=slog, stderr=slog
            )
            frozen_server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamrl",
                    "serve",
                    *args,
                    "--model",
                    "frozen",
                    "--port",
                    str(ports["frozen"]),
                ],
                stdout=slog,
                stderr=slog,
            )
        traffic = traffic or Traffic()
        serving = ServingRoot(out / "serving", cfg.serving.model)
        urls = {
            a: f"http://127.0.0.1:{ports[p]}/search" for a, p in (("frozen", "frozen"), ("live", "serve"))
        }
        traffic.ranker = ArmRanker(urls, timeout_s=2.0)
        sim_stop = threading.Event()
        sim_thread = threading.Thread(target=_traffic, args=(sim, first, cfg, sim_stop, traffic), daemon=True)
        try:
            with Live(console=console, refresh_per_second=1, transient=not panel) as live:
                last = (time.monotonic(), 0, 0, 0)
                grace = end + FIRST_PUSH_GRACE_S
                while not stop.wait(1.0):
                    now = time.monotonic()
                    if traffic.live_from is None and _ready(serving, out, ports):
                        sim.ranker, sim.start_ms = traffic.ranker, int(time.time() * 1000)
                        traffic.live_from = time.time()
                        sim_thread.start()
                    if now >= end and (serving.versions() or now >= grace):
                        break  # a run too short to push is given up to FIRST_PUSH_GRACE_S more
                    j = _get(f"http://127.0.0.1:{ports['joiner']}/healthz")
                    lh = _get(f"http://127.0.0.1:{ports['learner']}/healthz")
                    dt = max(now - last[0], 1e-6)
                    rates = (
                        (traffic.sent - last[1]) / dt,
                        (j.get("records_out", 0) - last[2]) / dt,
                        (lh.get("step", 0) - last[3]) / dt,
                    )
                    last = (now, traffic.sent, j.get("records_out", 0), lh.get("step", 0))
                    if panel:
                        live.update(draw_panel(traffic, j, lh, serving, rates, end - now))
        finally:
            sim_stop.set()
            traffic.live_until = time.time()
            if sim_thread.is_alive():
                sim_thread.join(timeout=10)
            code = _stop(daemon, 40)
            _stop(server, 20)
            _stop(frozen_server, 20)
        if before_broker_stops is not None:
            before_broker_stops(cfg)
    status = serving.status()
    ab = traffic.ab()
    (out / "ab.json").write_text(json.dumps({"arms": ab, "live_s": _live_s(traffic)}, indent=2))
    report = write_report(out, started, traffic, status)
    pushed = [v["version"] for v in status["versions"]]
    console.print(ab_table(ab, _live_s(traffic)))
    console.print(
        f"\ndaemon exit {code}; versions pushed {pushed}; A/B traffic ran: {traffic.live_from is not None}\n"
        f"report: {report}; A/B: {out / 'ab.json'}\nlogs: {out / 'daemon.log'}, {out / 'serve.log'}"
    )
    if code != 0 or not pushed:
        console.print("[red]the loop did not complete: see the logs[/red]")
        return 1
    return 0


def _ready(serving: ServingRoot, out: Path, ports: dict[str, int]) -> bool:
    """Version 1 (the warm start) is served by the live server; the frozen arm gets it pinned (a
    layout of its own, `frozen`, pushed once) and must serve it too before traffic starts."""
    if not serving.versions():
        return False
    frozen = ServingRoot(out / "serving", "frozen")
    if not frozen.versions():
        frozen.push(serving.version_path(1), {"trigger": "demo: the frozen arm is version 1 of default"})
    live = _get(f"http://127.0.0.1:{ports['serve']}/healthz")
    pinned = _get(f"http://127.0.0.1:{ports['frozen']}/healthz")
    return bool(live.get("ok")) and bool(pinned.get("ok"))


def _live_s(traffic: Traffic) -> float:
    if traffic.live_from is None:
        return 0.0
    return round((traffic.live_until or time.time()) - traffic.live_from, 1)
