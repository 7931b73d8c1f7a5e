"""What the demo shows: the live panel, the A/B table and the PNG report (streamrl/demo.py runs
the loop; this module only draws it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table

from streamrl.checkpoints.serving import ServingRoot
from streamrl.sim.closed_loop import ci_text

if TYPE_CHECKING:
    from streamrl.demo import Traffic

ARMS = ("logging", "frozen", "live")


def ab_table(ab: dict[str, dict[str, Any]], live_s: float) -> Table:
    table = Table(title=f"online A/B over {live_s:.0f} s of live traffic (95 % intervals)")
    for col in ("arm", "requests", "users", "CTR", "CTR 95 % CI", "orders/request"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, r in ab.items():
        table.add_row(
            arm,
            str(r["requests"]),
            str(r["users"]),
            f"{r['ctr']:.4f}",
            ci_text(r["ctr_ci95"]),
            f"{r['orders_per_request']:.3f}",
        )
    return table


def _fmt(v: Any, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


def panel(
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
    when = f"{left:.0f} s left" if left >= 0 else "waiting for the first push"
    warm = lh.get("warm_start") or {}
    if traffic.live_from is None:
        when += " — warm start, then the A/B begins"
    table = Table(title=f"streamrl demo — {when} (Ctrl-C stops and writes the report)")
    table.add_column("stage")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("simulator", "events/s produced", f"{rates[0]:.0f}"),
        ("joiner", "join lag (messages)", str(j.get("lag", "—"))),
        ("joiner", "open requests", str(j.get("open_requests", "—"))),
        ("joiner", "records/s", f"{rates[1]:.1f}"),
        ("learner", "warm start (SFT steps)", f"{warm.get('step', '—')} / {warm.get('of', '—')}"),
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
    ]
    for arm in ARMS:
        recent, total = traffic.cell(arm, 60).summary(), traffic.cell(arm).summary()
        rows.append(
            (
                f"A/B: {arm}",
                "CTR last 60 s | since start [95 % CI]",
                f"{recent['ctr']:.3f} | {total['ctr']:.3f} {ci_text(total['ctr_ci95'], 3)} "
                f"({total['requests']} req)",
            )
        )
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
    for label in ARMS:
        cells: dict[int, list[int]] = {}
        for t, arm, _, shown, clicks, _ in traffic.rows:
            if arm == label:
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
    axes[2].set_ylabel("simulated CTR by A/B arm\n(30 s windows)")
    axes[2].set_xlabel("minutes since start")
    axes[2].legend(loc="lower right")
    for ax in axes:
        for _v, x, _ in push_t:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    for version, x, _ in push_t:
        axes[0].annotate(f"v{version}", (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="top")
    fig.suptitle("streamrl demo: warm start, then live RL in an online A/B (dotted lines: pushes)")
    fig.tight_layout()
    path = out / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
