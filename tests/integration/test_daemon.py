"""The daemon end to end (issue #6): broker + simulator + `streamrl run` + `streamrl serve`. An order
event becomes a reward record, the learner trains past it, a checkpoint covering it is pushed and
served; a crashed child is restarted; SIGTERM drains everything and exits 0 with nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from tiny_world import TINY_LEARN, build_tiny_world

from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import verify
from streamrl.configs import StreamrlConfig
from streamrl.stream import kafka_io
from streamrl.stream.records import decode_batch

from .helpers import TEST_JOIN, free_port, overrides, scrape

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_event_to_served_version_restart_and_drain(kafka_cfg: StreamrlConfig, tmp_path: Path) -> None:
    build_tiny_world(tmp_path)  # the world file, its truth and its SIDs
    sup, learner_port, serve_port, joiner_port = free_port(), free_port(), free_port(), free_port()
    sets = [
        *overrides(kafka_cfg),
        *TEST_JOIN,
        *TINY_LEARN,
        f"learn.sids_dir={tmp_path / 'sids'}",
        f"learn.run_dir={tmp_path / 'run'}",
        f"serving.root={tmp_path / 'serving'}",
        f"weights.dir={tmp_path / 'weights'}",
        "checkpoint.every_steps=3",
        "checkpoint.every_s=2",
        "push.every_s=3",
        "push.eval_beam=4",
        "push.max_regression=1.0",  # this test is about the flow, not the gate
        f"push.notify_url=http://127.0.0.1:{serve_port}/reload",
        f"serving.port={serve_port}",
        "serving.beam=8",
        f"metrics.supervisor_port={sup}",
        f"metrics.learner_port={learner_port}",
        f"metrics.joiner_port={joiner_port}",
        "run.restart_backoff_s=0.5",
    ]
    args = [x for o in sets for x in ("--set", o)]
    logs = tmp_path / "daemon.log"
    with open(logs, "wb") as fh:
        daemon = subprocess.Popen([sys.executable, "-m", "streamrl", "run", *args], stdout=fh, stderr=fh)
        server = subprocess.Popen([sys.executable, "-m", "streamrl", "serve", *args], stdout=fh, stderr=fh)
    try:
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamrl",
                "simulate",
                "--world",
                str(tmp_path / "world.yaml"),
                "--kafka",
                "--requests",
                "400",
                "--rate",
                "3000",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        produced_at = time.time()
        # an order event of the simulated traffic ...
        t = kafka_cfg.kafka.topics
        orders = [orjson.loads(v) for _, _, v in kafka_io.read_span(kafka_cfg.kafka, t.orders, timeout_s=10)]
        assert orders
        # ... becomes a reward record at (partition, offset) on the rewards topic ...
        where: dict[str, tuple[int, int]] = {}
        deadline = time.monotonic() + 90
        wanted = {o["request_id"] for o in orders}
        while time.monotonic() < deadline and not wanted & where.keys():
            for part, offset, value in kafka_io.read_span(kafka_cfg.kafka, t.rewards, timeout_s=5):
                for rid in decode_batch(value).column("request_id").to_pylist():
                    where.setdefault(rid, (part, offset))
        rid = sorted(wanted & where.keys())[0]
        part, offset = where[rid]
        # ... and a pushed version that the server reports was trained past it
        serving = ServingRoot(tmp_path / "serving", "default")
        version = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and version is None:
            for v in serving.versions():
                m = verify(serving.version_path(v))
                if int(m["offsets"].get(t.rewards, {}).get(str(part), 0)) > offset:
                    version = v
                    break
            time.sleep(1)
        assert version is not None, logs.read_text()[-4000:]
        deadline = time.monotonic() + 30
        while (got := _get(f"http://127.0.0.1:{serve_port}/version")["version"]) is None or got < version:
            assert time.monotonic() < deadline, got
            time.sleep(0.3)
        print(f"order {rid} → served version {version}, {time.time() - produced_at:.1f} s after the traffic")
        body = json.dumps({"query": orders[0].get("query", "wool"), "k": 3}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{serve_port}/search", body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert len(json.loads(resp.read())["items"]) == 3
        # `streamrl status` summarises the running daemon
        st = subprocess.run(
            [sys.executable, "-m", "streamrl", "status", "--json", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert st.returncode == 0, st.stdout + st.stderr[-2000:]
        summary = json.loads(st.stdout)
        procs = summary["processes"]
        assert (
            procs["joiner-0"]["ok"]
            and procs["learner"]["ok"]
            and procs["supervisor"]["children"]["learner"]["up"]
        )
        assert "lag" in procs["joiner-0"] and procs["learner"]["step"] >= 1
        assert summary["serving"]["served_version"] >= version and summary["weights_version"] == 0
        assert summary["last_error"] is None
        # a crashed learner is restarted and counted
        health = json.loads(scrape(sup, "/healthz"))
        pid = health["children"]["learner"]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            h = json.loads(scrape(sup, "/healthz"))["children"]["learner"]
            if h["restarts"] >= 1 and h["up"] and h["pid"] != pid:
                break
            assert time.monotonic() < deadline, h
            time.sleep(0.3)
        assert 'streamrl_supervisor_restarts_total{child="learner"} 1.0' in scrape(sup)
        children = [c["pid"] for c in json.loads(scrape(sup, "/healthz"))["children"].values()]
        deadline = time.monotonic() + 60
        while "streamrl_learner_steps_total" not in scrape(learner_port, timeout_s=60):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        start = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=40)
        drained_in = time.monotonic() - start
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    assert code == 0, logs.read_text()[-4000:]
    assert drained_in < 30
    assert not any(_alive(p) for p in children)
    assert "drained, exit code 0" in logs.read_text()


def _get(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except OSError:
        return {"version": None}
