"""The one module that talks to Kafka (kafka-python): clients, topics, and reading spans back.

Everything here is thin: it builds clients from `KafkaConfig` (so production security settings pass
through untouched) and moves bytes. Join logic lives in stream/join.py, the loop in stream/joiner.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.net.sasl.oauth import AbstractTokenProvider

from streamrl.configs.schema import OAUTH_TOKEN_ENV, KafkaConfig, TopicsConfig
from streamrl.stream.dedup import FirstSeen
from streamrl.stream.records import CONTENT_TYPE, Record, decode_or_skip, encode_batch

__all__ = [
    "ConsumerRebalanceListener",
    "KafkaConsumer",
    "KafkaProducer",
    "OffsetAndMetadata",
    "RewardReader",
    "TopicFollower",
    "TopicPartition",
    "TopicsError",
    "check_copartitioned",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "produce_events",
    "read_span",
    "send_records",
]


log = logging.getLogger("streamrl.kafka")


class TokenProvider(AbstractTokenProvider):
    """OAUTHBEARER tokens: the file `kafka.sasl_oauth_token_file` re-read at each (re)authentication
    (so a platform refresher keeps it fresh), else the fixed $STREAMRL_KAFKA_OAUTH_TOKEN."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = Path(path) if path else None

    def token(self) -> str:
        if self.path is not None:
            value = self.path.read_text(encoding="utf-8").strip()
            if not value:
                raise ValueError(f"OAUTHBEARER token file {self.path} is empty")
            return value
        value = os.environ.get(OAUTH_TOKEN_ENV, "").strip()
        if not value:
            raise ValueError(f"OAUTHBEARER: ${OAUTH_TOKEN_ENV} is empty and no token file is configured")
        return value


def client_kwargs(kcfg: KafkaConfig) -> dict[str, Any]:
    """`KafkaConfig.client_kwargs` plus what only a kafka object can carry (the token provider)."""
    kw = dict(kcfg.client_kwargs())
    if kcfg.sasl_mechanism == "OAUTHBEARER":
        kw["sasl_oauth_token_provider"] = TokenProvider(kcfg.sasl_oauth_token_file)
    return kw


class TopicsError(RuntimeError):
    """Topics that exist but cannot carry the join as configured (refused at start-up)."""


def ensure_topics(
    kcfg: KafkaConfig, names: Iterable[str], partitions: int | None = None, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Create missing topics (idempotent) with their configured partitions, replication factor and
    topic configs (retention.ms, max.message.bytes, compression.type; configs/schema.py
    TopicsConfig), and wait until the broker reports their partitions. An existing topic is left as
    it is. Returns the broker's answer for each topic created."""
    names = list(names)
    admin = KafkaAdminClient(**client_kwargs(kcfg))
    created: list[dict[str, Any]] = []
    try:
        existing = set(admin.list_topics())
        missing = []
        for name in names:
            if name in existing:
                continue
            t = kcfg.topics.resolve(name)
            missing.append(
                NewTopic(name, partitions or t.partitions, t.replication_factor, topic_configs=t.configs)
            )
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a racing creator won
                answer = admin.create_topics(missing)
                created = list(answer.get("topics", []) if isinstance(answer, dict) else [])
                log.info(
                    "created topics %s", [(t.name, t.num_partitions, t.replication_factor) for t in missing]
                )
    finally:
        admin.close()
    probe = KafkaConsumer(**client_kwargs(kcfg))
    try:
        deadline = time.monotonic() + timeout_s
        while any(not probe.partitions_for_topic(name) for name in names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} not ready after {timeout_s} s")
            time.sleep(0.1)
    finally:
        probe.close()
    return created


def check_copartitioned(kcfg: KafkaConfig, names: Iterable[str]) -> int:
    """The join reads impressions, clicks and orders of one request from the same partition number
    of each topic (all keyed by request_id with the default partitioner), so the three must have the
    same partition count; a mismatch is refused with every count. Returns the count."""
    probe = KafkaConsumer(**client_kwargs(kcfg))
    try:
        counts = {name: len(probe.partitions_for_topic(name) or ()) for name in names}
    finally:
        probe.close()
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise TopicsError(
            f"the input topics are not co-partitioned ({listed}): the join needs every event of a "
            "request in the same partition number of each topic (keyed by request_id); give them the "
            "same partition count (and the same partitioner on the producing side)"
        )
    return next(iter(counts.values()))


def make_producer(kcfg: KafkaConfig, topic: str | None = None, **overrides: Any) -> KafkaProducer:
    """acks=all: a record counts as durable only once every in-sync replica has it. Messages are
    compressed with the codec configured for `topic` (the topics default when None)."""
    codec = kcfg.topics.resolve(topic or "").compression
    kw: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 512 * 1024,
        "max_request_size": 16 * 1024 * 1024,
        "retries": 5,
        "compression_type": None if codec == "none" else codec,
        **client_kwargs(kcfg),
    }
    kw.update(overrides)
    return KafkaProducer(**kw)


def make_consumer(kcfg: KafkaConfig, group: str | None, **overrides: Any) -> KafkaConsumer:
    """Manual commits only; a new group starts from the earliest offset (nothing skipped)."""
    kw: dict[str, Any] = {
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kcfg.session_timeout_ms,
        "heartbeat_interval_ms": kcfg.heartbeat_interval_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        **client_kwargs(kcfg),
    }
    kw.update(overrides)
    return KafkaConsumer(**kw)


def send_records(producer: KafkaProducer, topic: str, partition: int, table: pa.Table) -> Any:
    """One message holding an Arrow IPC batch of records (kafka-python sends ~20k msg/s)."""
    return producer.send(
        topic,
        value=encode_batch(table),
        partition=partition,
        headers=[("content-type", CONTENT_TYPE)],
    )


def split_by_bytes(table: pa.Table, max_rows: int, max_bytes: int) -> list[tuple[pa.Table, bytes]]:
    """The table as encoded batches of at most `max_rows` records and `max_bytes` bytes each (halving
    a batch until it fits). A single record over `max_bytes` is returned alone: the caller refuses it."""
    out: list[tuple[pa.Table, bytes]] = []
    todo = [table.slice(i, max_rows) for i in range(0, table.num_rows, max_rows)]
    while todo:
        part = todo.pop(0)
        data = encode_batch(part)
        if len(data) <= max_bytes or part.num_rows == 1:
            out.append((part, data))
        else:
            half = part.num_rows // 2
            todo[:0] = [part.slice(0, half), part.slice(half)]
    return out


def produce_events(producer: KafkaProducer, topics: TopicsConfig, lines: Iterable[bytes]) -> int:
    """Send contract events to their topics, keyed by request_id (item_id for items), as a search
    engine would. A value that names no known type still goes out (to the clicks topic), so tests
    and demos can show the joiner dead-lettering it."""
    route = {
        "impression": topics.impressions,
        "click": topics.clicks,
        "order": topics.orders,
        "item": topics.items,
    }
    n = 0
    for raw in lines:
        try:
            head = orjson.loads(raw)
            topic = route[head["type"]]
            key = head["item_id"] if head["type"] == "item" else head["request_id"]
            producer.send(topic, value=raw, key=str(key).encode())
        except (orjson.JSONDecodeError, KeyError, TypeError):
            producer.send(topics.clicks, value=raw)
        n += 1
    return n


def read_span(
    kcfg: KafkaConfig,
    topic: str,
    start: dict[int, int] | int | None = None,
    timeout_s: float = 60.0,
) -> Iterator[tuple[int, int, bytes]]:
    """(partition, offset, value) of every message from `start` to the high watermark at call time.

    `start` is a {partition: offset} map, or a timestamp in ms (offsets_for_times), or None for
    the beginning. Reads with manual assignment: no group, nothing committed.
    """
    consumer = make_consumer(kcfg, None, enable_auto_commit=False)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        if isinstance(start, int):
            found = consumer.offsets_for_times({tp: start for tp in tps})
            # no message at or after `start`: nothing to read there, and the fetch high watermark
            # below tells us where the end is (end_offsets() can be low on Tansu, BROKER.md)
            first = {tp: (found[tp].offset if found.get(tp) else None) for tp in tps}
        elif isinstance(start, dict):
            first = {tp: max(start.get(tp.partition, 0), begin[tp]) for tp in tps}
        else:
            first = dict(begin)
        for tp in tps:
            if first[tp] is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, first[tp])
        # Done with a partition once the position reaches the high watermark reported by a fetch
        # response (the reliable end on every broker we run against).
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=200, max_records=5000).items():
                for m in msgs:
                    yield tp.partition, m.offset, m.value
            for tp in list(pending):
                hw = consumer.highwater(tp)
                if hw is not None and consumer.position(tp) >= hw:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"reading {topic} back did not reach the end in {timeout_s} s")
    finally:
        consumer.close(autocommit=False)


class _PrimeOnAssign(ConsumerRebalanceListener):
    def __init__(self, reader: RewardReader) -> None:
        self.reader = reader

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        # Blocking calls are not allowed here (kafka-python 3 runs this on its IO thread): hold the
        # new partitions back until `poll` has primed them from the main thread.
        self.reader.consumer.pause(*assigned)
        self.reader.to_prime.update(assigned)


class RewardReader:
    """The learner's reader of the rewards topic: every request exactly once.

    Records reach the topic at least once (a joiner that crashes between producing and committing
    replays and may produce a record again, docs/architecture.md "Delivery"). All copies of a
    request's record sit in the same partition, so dropping every copy after the first in offset
    order is deterministic. On start the reader re-reads the `lookback_s` of the topic before its
    committed offsets to learn the request_ids it has already delivered, so a copy that lands after a
    reader restart is dropped too.
    """

    def __init__(
        self, kcfg: KafkaConfig, group: str, lookback_s: float = 3600.0, capacity: int = 5_000_000
    ) -> None:
        self.kcfg = kcfg
        self.topic = kcfg.topics.rewards
        self.seen = FirstSeen(capacity)
        self._lookback_ms = int(lookback_s * 1000)
        self.to_prime: set[TopicPartition] = set()
        self.consumer = make_consumer(kcfg, group)
        self.consumer.subscribe([self.topic], listener=_PrimeOnAssign(self))

    def prime(self, assigned: Iterable[TopicPartition]) -> None:
        """Learn the ids delivered before the committed offsets (the span a duplicate can follow)."""
        committed = {tp.partition: self.consumer.committed(tp) or 0 for tp in assigned}
        if not any(committed.values()):
            return
        since = int(time.time() * 1000) - self._lookback_ms
        for part, offset, value in read_span(self.kcfg, self.topic, since):
            if offset >= committed.get(part, 0):
                continue
            table = decode_or_skip(value, "learner priming", (part, offset))
            for rid in table.column("request_id").to_pylist() if table is not None else ():
                self.seen.first(rid)

    def poll(self, timeout_ms: int = 500) -> list[Record]:
        out: list[Record] = []
        if self.to_prime:
            assigned, self.to_prime = set(self.to_prime), set()
            self.prime(assigned)
            self.consumer.resume(*assigned)
        for _, msgs in self.consumer.poll(timeout_ms=timeout_ms).items():
            for m in msgs:
                table = decode_or_skip(m.value, "learner", (m.partition, m.offset))
                for rec in table.to_pylist() if table is not None else ():
                    if self.seen.first(rec["request_id"]):
                        out.append(rec)
        return out

    def commit(self) -> None:
        self.consumer.commit()

    def positions(self) -> dict[str, dict[int, int]]:
        """Next offset to read per assigned partition (what a checkpoint has consumed)."""
        return {
            self.topic: {
                tp.partition: self.consumer.position(tp) for tp in sorted(self.consumer.assignment())
            }
        }

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class TopicFollower:
    """Every message of a topic from its beginning, then the new ones as they come: no group, no
    commits (the streaming learner's view of the items topic, whose newest event per item wins)."""

    def __init__(self, kcfg: KafkaConfig, topic: str) -> None:
        ensure_topics(kcfg, [topic])
        self.consumer = make_consumer(kcfg, None)
        parts = self.consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=10_000)
        return [m.value for msgs in batch.values() for m in msgs if m.value is not None]

    def close(self) -> None:
        self.consumer.close()
