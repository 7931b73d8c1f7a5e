"""The streaming learner on the real broker: reads the rewards topic, steps, checkpoints, commits;
SIGTERM finishes the step, saves and exits 0."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_world import TINY_LEARN, build_tiny_world
from transformers import AutoModelForCausalLM

from streamrl.checkpoints.store import CheckpointStore, verify
from streamrl.configs import StreamrlConfig
from streamrl.rl.curves import read_scalars
from streamrl.stream import kafka_io

from .helpers import free_port, overrides, scrape

pytestmark = pytest.mark.integration
TINY = [*TINY_LEARN, "checkpoint.every_steps=2", "checkpoint.every_s=null", "push.enabled=false"]


@pytest.fixture
def world_on_topic(kafka_cfg: StreamrlConfig, tmp_path: Path) -> Path:
    """A tiny simulated world: its records on the rewards topic, its SIDs in tmp_path / sids."""
    build_tiny_world(tmp_path)
    t = kafka_cfg.kafka.topics
    kafka_io.ensure_topics(kafka_cfg.kafka, [t.rewards])
    producer = kafka_io.make_producer(kafka_cfg.kafka)
    table = pq.read_table(tmp_path / "rec" / "records-00000.parquet")
    for i in range(0, table.num_rows, 50):
        kafka_io.send_records(producer, t.rewards, 0, table.slice(i, 50))
    producer.flush()
    producer.close()
    return tmp_path


def _learn(cfg: StreamrlConfig, tmp: Path, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "streamrl",
        "learn",
        "--sids",
        str(tmp / "sids"),
        "--run-dir",
        str(tmp / "run"),
        "--set",
        f"serving.root={tmp / 'serving'}",
        "--set",
        f"weights.dir={tmp / 'weights'}",
    ]
    for o in [*overrides(cfg), *TINY]:
        cmd += ["--set", o]
    return cmd + list(extra)  # last: a test's own settings win


def test_streaming_learner_steps_checkpoints_and_commits(
    kafka_cfg: StreamrlConfig, world_on_topic: Path
) -> None:
    tmp = world_on_topic
    proc = subprocess.run(_learn(kafka_cfg, tmp, "--steps", "3"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["buffer"] >= 4 for s in steps)
    store = CheckpointStore(tmp / "run")
    assert [c.step for c in store.checkpoints()] == [2, 3]  # every 2 steps, and at the end
    manifest = verify(store.path(3))
    assert manifest["weights_version"] == 0 and manifest["parent"] == 2
    assert sum(manifest["offsets"][kafka_cfg.kafka.topics.rewards].values()) > 0
    model = AutoModelForCausalLM.from_pretrained(str(store.path(3)), local_files_only=True)
    assert model is not None
    # offsets were committed after the checkpoint: the group has a position on the rewards topic
    consumer = kafka_io.make_consumer(kafka_cfg.kafka, kafka_cfg.kafka.learn_group)
    tp = kafka_io.TopicPartition(kafka_cfg.kafka.topics.rewards, 0)
    assert (consumer.committed(tp) or 0) > 0
    consumer.close()


def test_sigterm_saves_and_exits_zero(kafka_cfg: StreamrlConfig, world_on_topic: Path) -> None:
    tmp = world_on_topic
    proc = subprocess.Popen(
        _learn(kafka_cfg, tmp), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first step's metrics
    assert json.loads(first)["step"] == 1
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - start < 30
    latest = CheckpointStore(tmp / "run").latest_valid()
    assert latest is not None and latest[0].step >= 1


PROMO = """
weights: {click_order: 1.0, ctr: 1.0, relevance: 2.0}
promotions:
  - name: festival
    match: {category_prefix: [c0]}
    bonus: {relevance: 1.0}
    start: 2020-01-01T00:00:00Z
    end: 2099-01-01T00:00:00Z
"""


class _Lines:
    """Drains a child's stdout on a thread (a full pipe would block the child), hands out step lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                self.q.put(json.loads(line))

    def until(self, pred, within_s: float) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                row = self.q.get(timeout=left)
            except queue.Empty:
                break
            if pred(row):
                return row
        raise AssertionError(f"no matching step line within {within_s} s")


def test_live_weights_scheduled_push_and_resume(kafka_cfg: StreamrlConfig, world_on_topic: Path) -> None:
    tmp = world_on_topic
    port = free_port()
    live = ["--set", "push.enabled=true", "--set", "push.every_s=2", "--set", "push.eval_beam=4"]
    live += ["--set", f"metrics.learner_port={port}"]
    proc = subprocess.Popen(
        _learn(kafka_cfg, tmp, *live),
        stdout=subprocess.PIPE,
        stderr=open(tmp / "learner.log", "w"),  # noqa: SIM115 - the child owns it for its life
        text=True,
    )
    lines = _Lines(proc)
    try:
        assert lines.until(lambda r: r["step"] >= 1, 120)["weights_version"] == 0
        (tmp / "promo.yaml").write_text(PROMO)
        (tmp / "broken.yaml").write_text(PROMO.replace("relevance: 2.0", "relevance: -2.0"))
        wset = ["--set", f"weights.dir={tmp / 'weights'}"]
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamrl",
                "weights",
                "apply",
                str(tmp / "broken.yaml"),
                "--author",
                "op",
                "--reason",
                "typo",
                *wset,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and "weights.relevance" in bad.stderr
        ok = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamrl",
                "weights",
                "apply",
                str(tmp / "promo.yaml"),
                "--author",
                "op",
                "--reason",
                "festival",
                *wset,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stderr
        applied = time.monotonic()
        row = lines.until(lambda r: r["weights_version"] == 1, 30)
        assert time.monotonic() - applied < 10  # switched at a step boundary, no restart
        assert "promoted_share" in row and "promoted_reward_rel" in row
        # the scheduler pushes a checkpoint through the gate into serving
        serving = tmp / "serving" / "default"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (serving / "1").is_dir():
            time.sleep(0.5)
        assert (serving / "1" / "manifest.json").exists()
        last = lines.until(lambda r: True, 30)["step"]
        text, deadline = scrape(port), time.monotonic() + 5
        # the snapshot is refreshed every metrics.publish_s (1 s): a fast step can beat it
        while time.monotonic() < deadline and (
            "streamrl_learner_weights_version 1.0" not in text
            or "streamrl_learner_served_version 0.0" in text
        ):
            time.sleep(0.3)
            text = scrape(port)
        for series in (
            "streamrl_learner_steps_total ",
            "streamrl_learner_skipped_steps_total ",
            "streamrl_learner_rollouts_per_second ",
            'streamrl_learner_reward{component="rel",kind="weighted"}',
            "streamrl_learner_advantage_std ",
            "streamrl_learner_loss ",
            "streamrl_learner_grad_norm ",
            "streamrl_learner_weights_version 1.0",
            "streamrl_learner_last_push_timestamp_seconds ",
            'streamrl_learner_pushes_total{result="refused"}',
            "streamrl_learner_reuse_factor ",
            "streamrl_learner_idle_seconds_total ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ):
            assert series in text, (series, text[-3000:])
        served = re.search(r"^streamrl_learner_served_version (\S+)$", text, re.M)
        assert served and float(served.group(1)) >= 1.0
        pushed = re.search(r'^streamrl_learner_pushes_total\{result="pushed"\} (\S+)$', text, re.M)
        assert pushed and float(pushed.group(1)) >= 1.0
        health = json.loads(scrape(port, "/healthz"))
        assert health["ok"] and health["step"] >= 1 and health["weights_version"] == 1
        assert health["member"] == "learner" and health["pid"] == proc.pid and health["heartbeat_age_s"] < 60
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    store = CheckpointStore(tmp / "run")
    final = store.latest_valid()
    assert final is not None and final[0].step >= last and verify(final[0].path)["weights_version"] == 1
    history = [json.loads(x) for x in (serving / "history.jsonl").read_text().splitlines()]
    assert history[0]["action"] == "push" and history[0]["trigger"] == "scheduled"
    # the steps and the push decisions as TensorBoard curves in the run folder
    curves = read_scalars(tmp / "run" / "tensorboard")
    steps = [s for s, _ in curves["train/loss"]]
    assert steps == sorted(steps) and steps[-1] >= last
    assert any(v == 1.0 for _, v in curves["push/pushed"]) and "push/hr_at_10" in curves
    # a restart resumes from the newest valid checkpoint and keeps counting (on new requests: the
    # group has committed everything so far)
    table = pq.read_table(tmp / "rec" / "records-00000.parquet")
    ids = pa.array([f"again-{r}" for r in table.column("request_id").to_pylist()])
    table = table.set_column(table.schema.get_field_index("request_id"), "request_id", ids)
    producer = kafka_io.make_producer(kafka_cfg.kafka)
    kafka_io.send_records(producer, kafka_cfg.kafka.topics.rewards, 0, table)
    producer.flush()
    producer.close()
    held_before = pq.read_table(tmp / "run" / "heldout.parquet").num_rows
    saved_buffer = pq.read_table(final[0].path / "buffer.parquet").num_rows
    assert held_before > 0 and saved_buffer > 0
    again = subprocess.run(
        _learn(kafka_cfg, tmp, "--steps", "1"), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from checkpoint {final[0].step}" in again.stderr
    lines = [json.loads(x) for x in again.stdout.splitlines() if x.startswith("{")]
    assert [x["step"] for x in lines] == [final[0].step + 1]
    # nothing of the past is lost: the held-out set is reloaded and only grows, the buffer is
    # refilled from the checkpoint (its records plus the new ones)
    assert f"buffer refilled with {saved_buffer} records" in again.stderr
    assert f"held-out set: {held_before} records reloaded" in again.stderr
    assert lines[0]["heldout"] >= held_before and lines[0]["buffer"] >= min(saved_buffer, 4)
    assert pq.read_table(tmp / "run" / "heldout.parquet").num_rows >= held_before


def test_warm_start_then_anchored_rl_with_the_first_push_after_it(
    kafka_cfg: StreamrlConfig, world_on_topic: Path
) -> None:
    """learn.warm_start on a Parquet folder: SFT steps with progress lines, a checkpoint, a push of
    that checkpoint through the gate as version 1 (the scheduler's period is far away), then RL steps
    with the KL term against the warm-start model; beta > 0 is accepted only thanks to the warm start."""
    tmp = world_on_topic
    warm = [
        *("--set", f"learn.warm_start.records={tmp / 'rec'}", "--set", "learn.warm_start.steps=6"),
        *("--set", "learn.beta=0.1", "--set", "learn.sft_weight=1.0"),
        *("--set", "push.enabled=true", "--set", "push.every_s=3600", "--set", "push.eval_beam=4"),
        *("--set", "push.heldout_percent=20", "--set", "push.min_distinct_top1=0"),
    ]
    proc = subprocess.run(
        _learn(kafka_cfg, tmp, "--steps", "2", *warm), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    progress = [x for x in lines if "warm_start_step" in x]
    steps = [x for x in lines if "step" in x]
    assert progress[-1] == {**progress[-1], "warm_start_step": 6, "of": 6} and len(progress) == 6
    assert lines.index(progress[-1]) < lines.index(steps[0])  # SFT first, then RL
    assert [s["step"] for s in steps] == [7, 8]  # the step counter counts the warm start's steps
    assert all("kl" in s and "sft_nll" in s and "entropy" in s and "distinct_sids" in s for s in steps)
    # the first RL step samples from the reference itself (KL 0); after one update it has moved
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[1]["kl"] > 0.0
    store = CheckpointStore(tmp / "run")
    assert [c.step for c in store.checkpoints()] == [6, 8]
    state = json.loads((store.path(6) / "learner_state.json").read_text())
    assert state["warm_start"]["steps"] == 6 and state["warm_start"]["prompts"] > 0
    history = [
        json.loads(x) for x in (tmp / "serving" / "default" / "history.jsonl").read_text().splitlines()
    ]
    pushes = [h for h in history if h["action"] == "push"]
    assert pushes[0]["version"] == 1 and pushes[0]["step"] == 6  # the warm start, first
    assert "hr@10" in pushes[0]["metrics"] and "distinct_top1_share" in pushes[0]["metrics"]
    assert (tmp / "run" / "heldout.parquet").exists()
    # with no anchor (no warm start, no init checkpoint) beta > 0 is refused with exit 2
    bare = subprocess.run(
        _learn(kafka_cfg, tmp, "--steps", "1", "--run-dir", str(tmp / "bare"), "--set", "learn.beta=0.1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 2 and "needs a model to anchor to" in bare.stdout + bare.stderr


def test_warm_start_from_a_look_back_on_the_rewards_topic(
    kafka_cfg: StreamrlConfig, world_on_topic: Path
) -> None:
    """learn.warm_start.lookback_s: the records come from the rewards topic (read without a group),
    then the live reader delivers them again as the learner's stream."""
    tmp = world_on_topic
    warm = ["--set", "learn.warm_start.lookback_s=3600", "--set", "learn.warm_start.steps=3"]
    proc = subprocess.run(
        _learn(kafka_cfg, tmp, "--steps", "1", "--run-dir", str(tmp / "lb"), *warm),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [x["warm_start_step"] for x in lines if "warm_start_step" in x] == [1, 2, 3]
    assert [x["step"] for x in lines if "step" in x] == [4]
    state = json.loads((CheckpointStore(tmp / "lb").path(3) / "learner_state.json").read_text())
    on_topic = pq.read_table(tmp / "rec" / "records-00000.parquet").num_rows
    # every record on the topic, less the held-out share (5 % of engaged requests by hash)
    assert 0.9 * on_topic <= state["warm_start"]["records"] <= on_topic


def test_new_items_get_sids_while_learning_and_reach_the_server(
    kafka_cfg: StreamrlConfig, world_on_topic: Path
) -> None:
    """Issue #11 §5: items that appear on the items topic get SIDs while the learner runs (existing
    items keep theirs), the codebook is versioned into the checkpoint, and a push carries it to a
    server, which decodes over the grown catalog."""
    import urllib.request

    from tiny_world import start_server

    tmp = world_on_topic
    before = {
        r["item_id"]: r["sid"] for r in pq.read_table(tmp / "sids" / "sid_codebook.parquet").to_pylist()
    }
    producer = kafka_io.make_producer(kafka_cfg.kafka)
    new = [f"new-{n}" for n in range(3)]
    for n, item in enumerate(new):
        event = {"type": "item", "item_id": item, "ts_ms": 1_700_000_000_000 + n, "title": f"wool hat {n}"}
        event |= {"category": ["c0", "hats"], "merchant_id": "m-new", "attrs": {"colour": "red"}}
        producer.send(kafka_cfg.kafka.topics.items, value=json.dumps(event).encode())
    producer.flush()
    producer.close()
    proc = subprocess.run(_learn(kafka_cfg, tmp, "--steps", "4"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"codebook version 1: {len(before) + 3} items (3 added since start)" in proc.stderr
    ckpt = CheckpointStore(tmp / "run").latest_valid()
    assert ckpt is not None
    meta = json.loads((ckpt[0].path / "sid_meta.json").read_text())
    after = {r["item_id"]: r for r in pq.read_table(ckpt[0].path / "sid_codebook.parquet").to_pylist()}
    assert meta["version"] == 1 and meta["items"] == len(before) + 3
    assert all(after[i]["sid"] == sid for i, sid in before.items())  # nobody re-IDed
    assert set(new) <= after.keys() and after["new-0"]["merchant_id"] == "m-new"
    assert len({tuple(r["sid"]) for r in after.values()}) == len(after)  # and no SID shared
    # a push carries the grown codebook to serving; the server decodes over it
    sets = [x for o in [*overrides(kafka_cfg), f"serving.root={tmp / 'serving'}"] for x in ("--set", o)]
    pushed = subprocess.run(
        [sys.executable, "-m", "streamrl", "push", "--run-dir", str(tmp / "run"), "--json", *sets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(pushed.stdout)["pushed"], pushed.stdout + pushed.stderr[-2000:]
    server, hello = start_server(sets)
    try:
        assert hello["version"] == 1 and hello["catalog_items"] == len(before) + 3
        with urllib.request.urlopen(f"{hello['serving']}/version", timeout=30) as resp:
            assert json.loads(resp.read())["catalog_items"] == len(before) + 3
    finally:
        server.terminate()
        server.wait(timeout=30)
