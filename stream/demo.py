"""`streamrl demo` at the foundation stage: a local broker, live generated events, one joiner process,
and a panel of what comes out (records and dead letters). The daemon issue turns this into the full
loop (learner, pushes, serving)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from configs import load_config
from configs.schema import KafkaConfig
from stream import kafka_io
from stream.broker import LocalBroker
from stream.events import Malformed, decode_event
from stream.records import decode_batch
from stream.synthetic import SynthSpec, generate

# Short windows so records appear within a minute of wall time (the production default is 600 s).
DEMO_OVERRIDES = [
    "join.window_s=20",
    "join.allowed_lateness_s=5",
    "join.idle_finalize_s=5",
    "join.orphan_ttl_s=10",
    "joiner.commit_interval_s=1",
    "archive.roll_s=5",
    "kafka.session_timeout_ms=6000",
    "kafka.heartbeat_interval_ms=1000",
]


def _produce_live(kcfg: KafkaConfig, spec: SynthSpec, stop: threading.Event, sent: Counter[str]) -> None:
    """Send generated events when their arrival time comes (the demo runs in real time)."""
    producer = kafka_io.make_producer(kcfg, acks=1, enable_idempotence=False)
    for arrival, raw in generate(spec):
        while arrival > time.time() * 1000:
            if stop.wait(0.01):
                break
        if stop.is_set():
            break
        kafka_io.produce_events(producer, kcfg.topics, [raw])
        try:
            sent[type(decode_event(raw)).__name__.lower()] += 1
        except Malformed:
            sent["malformed"] += 1
    producer.flush()
    producer.close()


def run_demo(duration: float, rate: float, out: Path, console: Console, stop: threading.Event) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with LocalBroker(log=out / "broker.log") as broker:
        overrides = [
            f"kafka.bootstrap_servers={broker.bootstrap}",
            f"archive.dir={out / 'archive'}",
            *DEMO_OVERRIDES,
        ]
        cfg = load_config(overrides=overrides)
        t = cfg.kafka.topics
        kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items, t.rewards, t.dlq])
        cmd = [sys.executable, "-m", "streamrl", "join"]
        for o in overrides:
            cmd += ["--set", o]
        with open(out / "joiner.log", "wb") as joiner_log:
            joiner = subprocess.Popen(cmd, stderr=joiner_log, env=os.environ)
        spec = SynthSpec(
            requests=int(rate * duration),
            rate_per_s=rate,
            start_ms=int(time.time() * 1000),
            window_ms=20_000,
            click_delay_ms=8_000,
            order_delay_ms=10_000,
            disorder_ms=2_000,
            dup_rate=0.01,
            orphan_rate=0.005,
            not_impressed_rate=0.005,
            malformed_rate=0.002,
            late_rate=0.0,
        )
        sent: Counter[str] = Counter()
        producer = threading.Thread(target=_produce_live, args=(cfg.kafka, spec, stop, sent), daemon=True)
        producer.start()
        reader = kafka_io.make_consumer(cfg.kafka, None)
        reader.assign(
            [
                kafka_io.TopicPartition(tp, p)
                for tp in (t.rewards, t.dlq)
                for p in reader.partitions_for_topic(tp) or ()
            ]
        )
        got: Counter[str] = Counter()
        sample: list[dict[str, object]] = []
        # Stream for `duration`, then let the joiner finalise what is open (idle flush) and stop
        # once nothing new has come out for a few seconds.
        deadline = time.monotonic() + duration + cfg.join.window_s + 30
        last_out = time.monotonic()
        with Live(console=console, refresh_per_second=2) as live:
            while time.monotonic() < deadline and not stop.is_set():
                before = sum(got.values())
                for tp, msgs in reader.poll(timeout_ms=500).items():
                    for m in msgs:
                        if tp.topic == t.rewards:
                            rows = decode_batch(m.value).to_pylist()
                            got["records"] += len(rows)
                            got["clicked items"] += sum(i["clicked"] for r in rows for i in r["items"])
                            sample = rows[-3:]
                        else:
                            got["dlq: " + orjson.loads(m.value)["reason"].split(":")[0]] += 1
                live.update(_panel(sent, got, sample, joiner.poll() is None))
                if sum(got.values()) != before:
                    last_out = time.monotonic()
                quiet = time.monotonic() - last_out > cfg.join.idle_finalize_s + 5
                if not producer.is_alive() and quiet:
                    break
            stop.set()
            joiner.terminate()  # SIGTERM: the joiner drains, commits and exits 0
            code = joiner.wait(timeout=30)
            live.update(_panel(sent, got, sample, False))
        reader.close()
    console.print(f"\njoiner exited {code}; archive in {out / 'archive'}; logs in {out}")
    return 0 if code == 0 and got["records"] > 0 else 1


def _panel(sent: Counter[str], got: Counter[str], sample: list[dict[str, object]], alive: bool) -> Table:
    table = Table(title=f"streamrl demo — joiner {'running' if alive else 'stopped'}")
    table.add_column("produced")
    table.add_column("n", justify="right")
    table.add_column("out of the joiner")
    table.add_column("n", justify="right")
    left, right = sorted(sent.items()), sorted(got.items())
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", "")
        b = right[i] if i < len(right) else ("", "")
        table.add_row(a[0], str(a[1]), b[0], str(b[1]))
    for rec in sample:
        items = rec["items"]
        assert isinstance(items, list)
        clicks = [i["item_id"] for i in items if i["clicked"]]
        table.add_row("record", str(rec["request_id"]), f"q={rec['query']!r} clicked={clicks}", "")
    return table
