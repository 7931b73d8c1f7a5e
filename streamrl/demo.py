"""`streamrl demo` (= `make run`): the whole loop on one machine, closed.

1. a local Kafka-protocol broker (Tansu) on loopback, topics created;
2. the simulated world (configs/world.yaml) and its semantic IDs (MiniLM by default);
3. the daemon (`streamrl run`: joiner + learner with scheduled checkpoints and pushes) and the
   reference server (`streamrl serve`), as child processes with their logs under OUT;
4. simulated traffic in real time, closed-loop: once a version is served, impressions come from its
   `POST /search`, and clicks/orders from the world's ground truth — so the served model's CTR in
   the simulation is measured over time against the logging ranker's;
5. a live panel; on exit (duration or Ctrl-C) everything started is stopped (SIGTERM, drained) and a
   PNG report is written: learner reward, held-out HR@10 per push, simulated CTR, pushes marked.
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
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from checkpoints.serving import ServingRoot
from configs import load_config
from configs.schema import StreamrlConfig
from sim.closed_loop import HttpRanker
from sim.simulate import Request, Simulator
from sim.world import World, build_world, load_world_config
from stream import kafka_io
from stream.broker import LocalBroker

WORLD = Path(__file__).resolve().parents[1] / "configs" / "world.yaml"
FIRST_PUSH_GRACE_S = 120.0  # a --duration that ends before the first push waits this long for it

# Short windows and cadences so the loop turns within minutes (production defaults are in schema.py).
# The demo's world compresses click and order delays 25x (OTTO's 64-546 s order gaps become 2.6-22 s)
# and keeps arrival disorder at 2 s, so a 25 s join window sees the orders and records finalise soon.
DEMO_DELAY_SCALE = 0.04
DEMO_DISORDER_S = 2.0
DEMO_SETS = [
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
    "push.every_s=10",
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
    from rl.encoders import load_encoder
    from rl.sid import CatalogItem, SidCodebook, save_codebook

    catalog = {
        it.item_id: CatalogItem(it.item_id, it.title, tuple(it.category), it.merchant_id, dict(it.attrs))
        for it in world.items
    }
    ids = sorted(catalog)
    enc = load_encoder(encoder)
    book = SidCodebook((64, 16, 8), (2, 16)).build(ids, enc.encode([catalog[i].text() for i in ids]), seed=0)
    save_codebook(book, catalog, out, enc.name)


@dataclass
class Traffic:
    """What the simulated users saw and did, by wall time and by who ranked."""

    started: float = field(default_factory=time.time)
    sent: int = 0
    rows: list[tuple[float, int | None, int, int, int]] = field(
        default_factory=list
    )  # t, v, shown, clicks, orders
    ranker: HttpRanker | None = None
    orders: list[tuple[str, float]] = field(default_factory=list)  # (request_id, wall time produced)

    def on_request(self, req: Request) -> None:
        version = self.ranker.version if (req.served and self.ranker) else None
        self.rows.append((time.time(), version, len(req.shown), len(req.clicks), len(req.orders)))

    def ctr(self, since_s: float, served: bool) -> tuple[float, int]:
        cut = time.time() - since_s
        rows = [r for r in self.rows[-5000:] if r[0] >= cut and (r[1] is not None) == served]
        return sum(r[3] for r in rows) / max(sum(r[2] for r in rows), 1), len(rows)


def _traffic(world: World, cfg: StreamrlConfig, url: str, stop: threading.Event, t: Traffic) -> None:
    t.ranker = HttpRanker(url, timeout_s=1.0)
    sim = Simulator(world, world.cfg.seed, start_ms=int(time.time() * 1000), ranker=t.ranker)
    producer = kafka_io.make_producer(cfg.kafka, acks=1, linger_ms=5)
    for arrival, raw in sim.events(10**9, t.on_request):
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


def run_demo(
    duration: float,
    out: Path,
    console: Console,
    stop: threading.Event,
    encoder: str = "minilm",
    traffic: Traffic | None = None,
    before_broker_stops: Callable[[StreamrlConfig], None] | None = None,
) -> int:
    for name in ("run", "serving", "weights", "archive", "sids", "report.png", "daemon.log", "serve.log"):
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ports = {k: free_port() for k in ("serve", "supervisor", "joiner", "learner")}
    started = time.time()
    with LocalBroker(log=out / "broker.log") as broker:
        sets = [
            f"kafka.bootstrap_servers={broker.bootstrap}",
            f"archive.dir={out / 'archive'}",
            f"learn.run_dir={out / 'run'}",
            f"learn.sids_dir={out / 'sids'}",
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
        wcfg = load_world_config(WORLD)
        behaviour = wcfg.behaviour.model_copy(
            update={"delay_scale": DEMO_DELAY_SCALE, "disorder_s": DEMO_DISORDER_S}
        )
        world = build_world(wcfg.model_copy(update={"behaviour": behaviour}))
        console.print(
            f"broker on {broker.bootstrap}; building semantic IDs of {len(world.items)} items ({encoder})"
        )
        build_sids(world, out / "sids", encoder)
        args = [x for o in sets for x in ("--set", o)]
        (out / "demo-overrides.txt").write_text("\n".join(sets) + "\n")
        with open(out / "daemon.log", "wb") as dlog, open(out / "serve.log", "wb") as slog:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "streamrl", "run", *args], stdout=dlog, stderr=dlog
            )
            server = subprocess.Popen(
                [sys.executable, "-m", "streamrl", "serve", *args], stdout=slog, stderr=slog
            )
        traffic = traffic or Traffic()
        url = f"http://127.0.0.1:{ports['serve']}/search"
        sim_stop = threading.Event()
        sim = threading.Thread(target=_traffic, args=(world, cfg, url, sim_stop, traffic), daemon=True)
        sim.start()
        serving = ServingRoot(out / "serving", cfg.serving.model)
        end = time.monotonic() + duration
        try:
            with Live(console=console, refresh_per_second=1) as live:
                last = (time.monotonic(), 0, 0, 0)
                grace = end + FIRST_PUSH_GRACE_S
                while not stop.wait(1.0):
                    now = time.monotonic()
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
                    live.update(_panel(traffic, j, lh, serving, rates, end - now))
        finally:
            sim_stop.set()
            sim.join(timeout=10)
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=40)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = -9
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        if before_broker_stops is not None:
            before_broker_stops(cfg)
    status = serving.status()
    report = write_report(out, started, traffic, status)
    pushed = [v["version"] for v in status["versions"]]
    served = any(r[1] is not None for r in traffic.rows)
    console.print(
        f"\ndaemon exit {code}; versions pushed {pushed}; served answered the simulator: {served}\n"
        f"report: {report}\nlogs: {out / 'daemon.log'}, {out / 'serve.log'}"
    )
    if code != 0 or not pushed:
        console.print("[red]the loop did not complete: see the logs[/red]")
        return 1
    return 0


def _fmt(v: Any, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


def _panel(
    traffic: Traffic, j: dict, lh: dict, serving: ServingRoot, rates: tuple[float, float, float], left: float
) -> Group:
    st: dict[str, Any]
    try:  # policy.json, a folder listing and the history's tail, once a second
        st = {
            "served_version": serving.served(),
            "held": serving.held(),
            "last_push": serving.last_of("push"),
        }
    except (OSError, ValueError):
        st = {"last_push": None, "served_version": None, "held": False}
    last = st["last_push"] or {}
    hr = (last.get("metrics") or {}).get("hr@10")
    ctr_s, n_s = traffic.ctr(60, served=True)
    ctr_l, n_l = traffic.ctr(60, served=False)
    when = f"{left:.0f} s left" if left >= 0 else "waiting for the first push"
    table = Table(title=f"streamrl demo — {when} (Ctrl-C stops and writes the report)")
    table.add_column("stage")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("simulator", "events/s produced", f"{rates[0]:.0f}"),
        ("joiner", "join lag (messages)", str(j.get("lag", "—"))),
        ("joiner", "open requests", str(j.get("open_requests", "—"))),
        ("joiner", "records/s", f"{rates[1]:.1f}"),
        ("learner", "steps/s", f"{rates[2]:.2f}"),
        ("learner", "step", str(lh.get("step", "—"))),
        ("learner", "rollouts/s", str(lh.get("rollouts_per_s", "—"))),
        (
            "learner",
            "reward mean (co / ctr / rel)",
            " / ".join(_fmt(lh.get(k)) for k in ("reward_co", "reward_ctr", "reward_rel")),
        ),
        ("learner", "weights version", str(lh.get("weights_version", "—"))),
        ("serving", "served version", f"{st['served_version']}{' (pinned)' if st['held'] else ''}"),
        (
            "serving",
            "last push",
            f"v{last.get('version')} at {str(last.get('at', '—'))[11:19]}" if last else "—",
        ),
        ("serving", "held-out HR@10 at last push", _fmt(hr)),
        ("simulation", "CTR last 60 s: served model", f"{ctr_s:.3f} ({n_s} requests)"),
        ("simulation", "CTR last 60 s: logging ranker", f"{ctr_l:.3f} ({n_l} requests)"),
    ]
    for r in rows:
        table.add_row(*r)
    return Group(table)


def write_report(out: Path, started: float, traffic: Traffic, status: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = []
    log = out / "daemon.log"
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"step"'):
                try:
                    steps.append(json.loads(line))
                except ValueError:
                    continue
    pushes = [(v, v["pushed_at"]) for v in status["versions"] if v.get("pushed_at")]

    def minutes(ts: float) -> float:
        return (ts - started) / 60

    from datetime import datetime

    push_t = [
        (v["version"], minutes(datetime.fromisoformat(at).timestamp()), v["metrics"].get("hr@10"))
        for v, at in pushes
    ]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ts = [minutes(s["ts"]) for s in steps if "ts" in s and "reward_mean" in s]
    rw = [s["reward_mean"] for s in steps if "ts" in s and "reward_mean" in s]
    if rw:
        k = max(1, len(rw) // 50)
        smooth = [sum(rw[max(0, i - k) : i + 1]) / len(rw[max(0, i - k) : i + 1]) for i in range(len(rw))]
        axes[0].plot(ts, rw, alpha=0.3, label="per step")
        axes[0].plot(ts, smooth, label="smoothed")
        axes[0].legend(loc="lower right")
    axes[0].set_ylabel("learner reward\n(mean item reward)")
    hx = [p[1] for p in push_t if p[2] is not None]
    hy = [p[2] for p in push_t if p[2] is not None]
    axes[1].plot(hx, hy, "o-")
    axes[1].set_ylabel("held-out HR@10\nat each push")
    window = 30.0
    for served, label in ((True, "served model"), (False, "logging ranker")):
        cells: dict[int, list[int]] = {}
        for t, version, shown, clicks, _ in traffic.rows:
            if (version is not None) == served:
                c = cells.setdefault(int((t - started) // window), [0, 0])
                c[0] += shown
                c[1] += clicks
        xs = sorted(cells)
        axes[2].plot(
            [(x + 0.5) * window / 60 for x in xs],
            [cells[x][1] / max(cells[x][0], 1) for x in xs],
            "o-",
            label=label,
        )
    axes[2].set_ylabel("simulated CTR\n(30 s windows)")
    axes[2].set_xlabel("minutes since start")
    axes[2].legend(loc="lower right")
    for ax in axes:
        for _v, x, _ in push_t:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    for version, x, _ in push_t:
        axes[0].annotate(f"v{version}", (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="top")
    fig.suptitle("streamrl demo: the served model over time (dotted lines: pushes)")
    fig.tight_layout()
    path = out / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
