"""Issue #11 §1 on the real broker: `torchrun --nproc-per-node 2 -m streamrl learn` (gloo, CPU) reads
the rewards topic through rank 0, steps as one learner, and rank 0 alone checkpoints; kill -9 of
rank 1 makes torchrun restart the group, which resumes from the last checkpoint and steps on; SIGTERM
drains. Offline (`--records`) runs unchanged under torchrun too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_world import TINY_LEARN

from streamrl.checkpoints.store import CheckpointStore, verify
from streamrl.configs import StreamrlConfig

from .test_learner_stream import _learn, _Lines, world_on_topic  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
# torchrun with a clean exit on SIGTERM (streamrl/launch.py): what `streamrl run` uses for world_size > 1
TORCHRUN = [sys.executable, "-m", "streamrl.launch", "--standalone", "--nproc-per-node=2"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank under torchrun's agent `parent`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_two_ranks_learn_from_the_broker_and_survive_kill_9(
    kafka_cfg: StreamrlConfig,
    world_on_topic: Path,  # noqa: F811
) -> None:
    tmp = world_on_topic
    cmd = _learn(kafka_cfg, tmp, "--set", "checkpoint.every_steps=2", "--set", "learn.max_reuse=null")
    assert cmd[1:4] == ["-m", "streamrl", "learn"]
    log = tmp / "ddp.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*TORCHRUN, "--max-restarts=1", "-m", "streamrl", *cmd[3:]],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    lines = _Lines(proc)
    store = CheckpointStore(tmp / "run")
    try:
        lines.until(lambda r: r["step"] >= 4, 240)  # rank 0's lines only: one per step
        deadline = time.monotonic() + 60
        while not store.checkpoints() and time.monotonic() < deadline:
            time.sleep(0.2)
        ckpt = store.checkpoints()[-1]
        manifest = verify(ckpt.path)
        assert sum(manifest["offsets"][kafka_cfg.kafka.topics.rewards].values()) > 0
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        while not lines.q.empty():  # the lines of before the kill
            lines.q.get_nowait()
        # torchrun restarts the group; every rank resumes from rank 0's newest checkpoint
        deadline = time.monotonic() + 120
        while (m := re.search(r"resumed from checkpoint (\d+)", log.read_text())) is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        resumed = int(m.group(1))
        assert resumed >= ckpt.step
        after = lines.until(lambda r: r["step"] == resumed + 1, 240)  # and steps on from it
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    text = log.read_text()
    ranks = {json.loads(x)["member"] for x in text.splitlines() if x.startswith("{")}
    assert {"learn-rank0", "learn-rank1"} <= ranks or {"learner-rank0", "learner-rank1"} <= ranks, ranks
    assert code == 0, text[-3000:]
    final = store.latest_valid()
    assert final is not None and final[0].step >= after["step"]


def test_offline_learn_runs_unchanged_under_torchrun(tmp_path: Path) -> None:
    from tiny_world import build_tiny_world, streamrl

    build_tiny_world(tmp_path)
    sets = [x for o in TINY_LEARN for x in ("--set", o)]
    args = ["learn", "--records", str(tmp_path / "rec"), "--sids", str(tmp_path / "sids"), "--steps", "3"]
    proc = subprocess.run(
        [*TORCHRUN, "-m", "streamrl", *args, "--run-dir", str(tmp_path / "run"), *sets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0's summary, the last line
    assert summary["steps"] == 3 and summary["checkpoint"].endswith("0000000003")
    assert [c.step for c in CheckpointStore(tmp_path / "run").checkpoints()] == [3]
    one = streamrl(*args, "--run-dir", str(tmp_path / "one"), *sets)  # the same run in one process
    assert json.loads(one.stdout.strip().splitlines()[-1])["last"]["loss"] == pytest.approx(
        summary["last"]["loss"], rel=1e-3, abs=1e-5
    )
