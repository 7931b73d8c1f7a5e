"""`streamrl run --config FILE`: the daemon. It runs the joiner(s) and the learner (with its push
scheduler) as supervised child processes — `python -m streamrl join|learn` with the same config and
overrides — so neither's GIL starves the other.

- A child that exits is restarted after a delay that doubles from `run.restart_backoff_s` up to
  `run.restart_backoff_max_s` (back to the first delay once a child has lived `healthy_after_s`);
  each exit is logged with its code and counted (`streamrl_supervisor_restarts_total{child}`).
- SIGTERM/SIGINT: SIGTERM to every child (the joiner finalises what it may and commits; the learner
  finishes its step, checkpoints and commits), wait up to `run.drain_timeout_s`, SIGKILL what is
  left, exit 0 when every child drained cleanly (1 otherwise). Children run in their own session, so
  a terminal's Ctrl-C reaches them only through this path.
- A restart of the daemon resumes where it stopped: the joiner from its committed offsets (and the
  rewards topic it re-reads), the learner from its newest valid checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamrl.configs.schema import StreamrlConfig
from streamrl.stream.metrics import MEMBER_ENV, ProcessMetrics

log = logging.getLogger("streamrl.supervisor")


@dataclass
class Child:
    name: str
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    next_start: float = 0.0
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


def child_commands(cfg: StreamrlConfig, config: Path | None, overrides: list[str]) -> list[Child]:
    base = [sys.executable, "-m", "streamrl"]
    common = [*(["--config", str(config)] if config else []), *[x for o in overrides for x in ("--set", o)]]
    out = []
    for i in range(cfg.run.joiners):
        extra = []
        if cfg.metrics.joiner_port and i:
            extra += ["--set", f"metrics.joiner_port={cfg.metrics.joiner_port + i}"]
        if cfg.kafka.group_instance_id:
            extra += ["--set", f"kafka.group_instance_id={cfg.kafka.group_instance_id}-{i}"]
        out.append(Child(f"joiner-{i}", [*base, "join", *common, *extra]))
    if cfg.run.learner:
        lc = cfg.learn
        launcher = base
        if lc.world_size > 1:  # torchrun: the ranks, and a fresh group after a rank dies (rl/distributed.py)
            launcher = [sys.executable, "-m", "streamrl.launch", "--standalone"]
            launcher += [
                f"--nproc-per-node={lc.world_size}",
                f"--max-restarts={lc.max_restarts}",
                "-m",
                "streamrl",
            ]
        out.append(Child("learner", [*launcher, "learn", *common]))
    return out


def supervise(cfg: StreamrlConfig, children: list[Child], stop: threading.Event) -> int:
    rc = cfg.run
    metrics = ProcessMetrics("supervisor", cfg.metrics.stale_after_s)
    metrics.serve(cfg.metrics.host, cfg.metrics.supervisor_port)
    for c in children:
        c.backoff = rc.restart_backoff_s
        _start(c)
    while not stop.wait(0.2):
        now = time.monotonic()
        for c in children:
            if c.proc is not None and c.proc.poll() is not None:
                code = c.proc.returncode
                c.exits.append(code)
                c.restarts += 1
                if now - c.started >= rc.healthy_after_s:
                    c.backoff = rc.restart_backoff_s
                c.next_start = now + c.backoff
                log.error(
                    "child %s (pid %d) exited with code %d after %.1f s; restart %d in %.1f s",
                    c.name,
                    c.proc.pid,
                    code,
                    now - c.started,
                    c.restarts,
                    c.backoff,
                )
                c.backoff = min(c.backoff * 2, rc.restart_backoff_max_s)
                c.proc = None
            if c.proc is None and now >= c.next_start:
                _start(c)
        _publish(metrics, children)
    code = drain(children, rc.drain_timeout_s)
    metrics.stop()
    return code


def _start(c: Child) -> None:
    # the child's member name goes into every log line and its /healthz (stream/metrics.py)
    c.proc = subprocess.Popen(c.cmd, start_new_session=True, env={**os.environ, MEMBER_ENV: c.name})
    c.started = time.monotonic()
    log.info("started %s (pid %d)", c.name, c.proc.pid)


def drain(children: list[Child], timeout_s: float) -> int:
    live = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for c in live:
        assert c.proc is not None
        c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    clean = True
    for c in live:
        assert c.proc is not None
        try:
            code = c.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("child %s did not drain within %.0f s: killed", c.name, timeout_s)
            c.proc.kill()
            c.proc.wait()
            clean = False
            continue
        log.info("child %s drained, exit code %d", c.name, code)
        clean = clean and code == 0
    return 0 if clean else 1


def _publish(metrics: ProcessMetrics, children: list[Child]) -> None:
    up = {c.name: c.proc is not None and c.proc.poll() is None for c in children}
    metrics.publish(
        {
            "streamrl_supervisor_restarts_total": (
                "Child exits followed by a restart",
                {(("child", c.name),): float(c.restarts) for c in children},
            ),
            "streamrl_supervisor_child_up": (
                "1 while the child process runs",
                {(("child", name),): float(v) for name, v in up.items()},
            ),
        },
        {
            "ok": all(up.values()),
            "children": {
                c.name: {
                    "pid": c.proc.pid if c.proc else None,
                    "up": up[c.name],
                    "restarts": c.restarts,
                    "last_exit": c.exits[-1] if c.exits else None,
                }
                for c in children
            },
        },
    )
