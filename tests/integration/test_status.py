"""`streamrl status` over every member (issue #13): `streamrl run` with two joiners and no learner on
the real broker; status names joiner-0 and joiner-1 with their own pid, port and health, every log
line of the daemon is JSON with pid and member, and a member that stops answering is reported down
by name (exit 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrl.configs import StreamrlConfig

from .helpers import TEST_JOIN, free_port, overrides, scrape

pytestmark = pytest.mark.integration


def _status(args: list[str]) -> tuple[int, dict]:
    st = subprocess.run(
        [sys.executable, "-m", "streamrl", "status", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(st.stdout.strip().splitlines()) == 1, st.stdout  # --json: one line
    return st.returncode, json.loads(st.stdout)


def test_status_covers_every_joiner_member(kafka_cfg: StreamrlConfig, tmp_path: Path) -> None:
    sup, joiner = free_port(), free_port()
    sets = [
        *overrides(kafka_cfg),
        *TEST_JOIN,
        "run.joiners=2",
        "run.learner=false",
        f"metrics.supervisor_port={sup}",
        f"metrics.joiner_port={joiner}",
        "metrics.learner_port=0",
        f"serving.root={tmp_path / 'serving'}",
        f"weights.dir={tmp_path / 'weights'}",
    ]
    args = [x for o in sets for x in ("--set", o)]
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        daemon = subprocess.Popen([sys.executable, "-m", "streamrl", "run", *args], stdout=fh, stderr=fh)
    stopped = None
    try:
        for port in (joiner, joiner + 1):  # each member up and through its first loop pass
            deadline = time.monotonic() + 90
            while "lag" not in json.loads(scrape(port, "/healthz", timeout_s=90)):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        code, out = _status(args)
        procs = out["processes"]
        assert set(procs) == {"supervisor", "joiner-0", "joiner-1", "learner"}
        assert code == 0 and procs["learner"]["ok"] is None  # no endpoint configured, not down
        children = procs["supervisor"]["children"]
        for i in range(2):
            p = procs[f"joiner-{i}"]
            assert p["ok"] and p["member"] == f"joiner-{i}" and "lag" in p and p["heartbeat_age_s"] < 30
            assert p["pid"] == children[f"joiner-{i}"]["pid"]
        assert procs["joiner-0"]["pid"] != procs["joiner-1"]["pid"]
        # joiner-1 stops answering (SIGSTOP): down by name, exit 1, joiner-0 still up
        stopped = procs["joiner-1"]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        code, out = _status(args)
        assert (
            code == 1 and out["processes"]["joiner-1"]["ok"] is False and out["processes"]["joiner-0"]["ok"]
        )
        assert out["last_error"].startswith("joiner-1:")
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        daemon.send_signal(signal.SIGTERM)
        # drains within its timeout; the exit code is not this test's subject: the stopped member may
        # have been evicted from the group, and a final commit refused by the broker exits 1 honestly
        daemon.wait(timeout=60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    members = {(x["member"], x["pid"]) for x in lines}
    assert {"supervisor", "joiner-0", "joiner-1"} == {m for m, _ in members}
    assert len({pid for _, pid in members}) == 3
