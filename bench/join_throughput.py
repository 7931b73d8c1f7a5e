"""Join throughput: the same N events consumed (a) raw by a kafka-python group consumer with orjson
decode only, (b) by the joiner end to end into durable reward records (acknowledged by the broker,
offsets committed), in one run on one local broker. Prints both rates and their ratio (target ≥ 0.8),
and the join state's bytes per open request.

    .venv/bin/python bench/join_throughput.py [--events 200000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrl.configs import StreamrlConfig, load_config
from streamrl.stream import kafka_io
from streamrl.stream.broker import LocalBroker
from streamrl.stream.events import decode_event
from streamrl.stream.join import Enricher, JoinState, Source
from streamrl.stream.synthetic import SynthSpec, generate


def produce(cfg: StreamrlConfig, n_events: int) -> int:
    spec = SynthSpec(requests=n_events, seed=1, rate_per_s=50)
    producer = kafka_io.make_producer(cfg.kafka, acks=1, linger_ms=20, enable_idempotence=False)
    n = 0
    batch = []
    for _, raw in generate(spec):
        batch.append(raw)
        n += 1
        if n >= n_events:
            break
    kafka_io.produce_events(producer, cfg.kafka.topics, batch)
    producer.flush()
    producer.close()
    return n


def raw_consume(cfg: StreamrlConfig, n: int, group: str) -> float:
    t = cfg.kafka.topics
    consumer = kafka_io.make_consumer(cfg.kafka, group, max_poll_records=2000)
    consumer.subscribe([t.impressions, t.clicks, t.orders])
    got, start = 0, None
    while got < n:
        for _, msgs in consumer.poll(timeout_ms=500).items():
            if start is None:
                start = time.perf_counter()
            for m in msgs:
                orjson.loads(m.value)
                got += 1
    elapsed = time.perf_counter() - (start or 0)
    consumer.close()
    return got / elapsed


def join_consume(cfg: StreamrlConfig, n: int) -> tuple[float, int]:
    """The joiner's own loop (`Joiner.step`) until every input partition is read to its high
    watermark, then end of input (open requests finalised, as replay does) and a last commit."""
    from streamrl.stream.joiner import Joiner

    joiner = Joiner(cfg)
    joiner.setup()
    start = None
    while True:
        joiner.step()
        if start is None and joiner.stats()["events"]:
            start = time.perf_counter()
        if start is not None and _caught_up(joiner):
            break
    now = int(time.time() * 1000)
    for shard in joiner.shards.values():
        shard.finish(now)
    joiner._commit()  # records acknowledged by the broker (acks=all), offsets committed
    elapsed = time.perf_counter() - (start or 0)
    stats = joiner.stats()
    joiner.consumer.close(autocommit=False)
    joiner.producer.close()
    consumed = stats["events"] + stats["dead_malformed"]
    assert consumed == n, (consumed, n)
    return consumed / elapsed, stats["records"]


def _caught_up(joiner: object) -> bool:
    consumer = joiner.consumer  # type: ignore[attr-defined]
    parts = consumer.assignment()
    return bool(parts) and all(
        consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in parts
    )


def bytes_per_open_request(cfg: StreamrlConfig, n: int = 20_000) -> float:
    spec = SynthSpec(requests=n, seed=2, click_p1=0.0)  # impressions only: all stay open
    state = JoinState(cfg.join.model_copy(update={"window_s": 1e9}), Enricher(cfg.join))
    lines = [raw for _, raw in generate(spec)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, raw in enumerate(lines):
        ev = decode_event(raw)
        state.on_event(ev, raw, Source("t", 0, i), "in", 0)  # type: ignore[arg-type]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / len(state.open)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of (a) and (b), alternated")
    args = ap.parse_args()
    with LocalBroker() as broker:
        base = [
            f"kafka.bootstrap_servers={broker.bootstrap}",
            "kafka.session_timeout_ms=6000",
            "kafka.heartbeat_interval_ms=1000",
            "joiner.recovery_lookback_s=0",
        ]
        cfg = load_config(overrides=base)
        t = cfg.kafka.topics
        kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items])
        t0 = time.perf_counter()
        n = produce(cfg, args.events)
        print(f"produced {n} events in {time.perf_counter() - t0:.1f} s")
        raws, joins = [], []
        for i in range(args.repeat):  # alternate (a) and (b) so both see the same machine state
            raws.append(raw_consume(cfg.model_copy(deep=True), n, group=f"bench-raw-{i}"))
            print(f"(a) raw group consumer + orjson decode : {raws[-1]:10.0f} events/s")
            joined_cfg = load_config(
                overrides=[
                    *base,
                    f"kafka.join_group=bench-join-{i}",
                    f"kafka.topics.rewards=bench.rewards.{i}",
                    f"kafka.topics.dlq=bench.dlq.{i}",
                ]
            )
            rate, records = join_consume(joined_cfg, n)
            joins.append(rate)
            print(f"(b) joiner → durable reward records   : {rate:10.0f} events/s ({records} records)")
        raw, joined = statistics.median(raws), statistics.median(joins)
        print(f"median (a) {raw:.0f}/s, median (b) {joined:.0f}/s over {args.repeat} runs each")
        print(f"ratio (b)/(a) = {joined / raw:.2f}   (target ≥ 0.8)")
    per = bytes_per_open_request(cfg)
    print(f"join state: {per:.0f} bytes per open request (10 impressed items, tracemalloc)")


if __name__ == "__main__":
    main()
