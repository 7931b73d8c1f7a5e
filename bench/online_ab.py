"""The online A/B in the closed loop (issue #10): the demo's whole loop without its panel — a logged
backlog, the daemon's warm start (version 1), then M minutes of real-time simulated traffic split by
user into `logging` (the engine's ranker), `frozen` (version 1, pinned) and `live` (the daemon's
newest push, learning RL from the live stream).

    .venv/bin/python bench/online_ab.py [--world configs/world.yaml] [--seed S] [--minutes 5] [--json]

Prints the arms' requests and users, CTR with its 95 % interval (delta method clustered by user,
sim/closed_loop.py) and orders per request, then the live/frozen and live/logging CTR ratios; with
--json the last line is
{"arms": {"logging"|"frozen"|"live": {"requests", "ctr", "ctr_ci95", "orders_per_request", ...}}}.
Set-up (broker, SIDs, backlog, warm start) comes on top of the minutes of traffic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrl.demo import WORLD, Traffic, _live_s, run_demo  # noqa: E402
from streamrl.sim.closed_loop import ci_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=WORLD)
    ap.add_argument("--seed", type=int, default=None, help="world and traffic seed (default: the file's)")
    ap.add_argument("--minutes", type=float, default=5.0, help="minutes of A/B traffic after the warm start")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--out", type=Path, default=None, help="keep the run folder here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    traffic = Traffic()
    stop = threading.Event()
    start = time.monotonic()

    def stop_after_minutes() -> None:  # M minutes counted from the first A/B request
        while not stop.wait(1.0):
            if traffic.live_from is not None and time.time() - traffic.live_from >= args.minutes * 60:
                stop.set()

    threading.Thread(target=stop_after_minutes, daemon=True).start()
    with tempfile.TemporaryDirectory() as d:
        out = args.out or Path(d)
        # the run's own clock is generous: the watcher above stops it M minutes into the A/B
        code = run_demo(
            args.minutes * 60 + 900,
            out,
            Console(stderr=True),
            stop,
            args.encoder,
            traffic,
            world_file=args.world,
            seed=args.seed,
            panel=False,
        )
        steps = _learner_steps(out / "daemon.log")
    arms = traffic.ab()
    live_s = _live_s(traffic)
    print(f"\n{args.world.name}, seed {args.seed}, {live_s:.0f} s of A/B traffic, {steps} RL steps live, "
          f"{time.monotonic() - start:.0f} s in all; daemon exit {code}")  # fmt: skip
    print(f"{'arm':8} {'requests':>9} {'users':>6} {'CTR':>7} {'95 % CI':>17} {'orders/req':>11}")
    for arm, r in arms.items():
        print(
            f"{arm:8} {r['requests']:9d} {r['users']:6d} {r['ctr']:7.4f} {ci_text(r['ctr_ci95']):>17} "
            f"{r['orders_per_request']:11.4f}"
        )
    base = {a: arms[a]["ctr"] for a in arms}
    if base["frozen"] and base["logging"]:
        print(
            f"live / frozen CTR {base['live'] / base['frozen']:.3f}; "
            f"live / logging {base['live'] / base['logging']:.3f}"
        )
    if args.json:
        print(json.dumps({"arms": arms, "live_s": live_s, "rl_steps": steps, "exit": code}))


def _learner_steps(log: Path) -> int:
    """RL steps the learner took: its step lines in the daemon log (warm-start lines differ)."""
    if not log.exists():
        return 0
    return sum(line.startswith('{"step"') for line in log.read_text(errors="replace").splitlines())


if __name__ == "__main__":
    main()
