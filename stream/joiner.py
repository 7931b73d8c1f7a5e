"""`streamrl join`: the long-lived joiner member (setup → loop → shutdown).

A kafka-python consumer group over the impression, click and order topics. The three are keyed by
request_id with equal partition counts, so partition k of each holds all events of the requests in
shard k; each shard has its own `JoinState`. Scale out by adding members (up to the partition count).

Delivery (docs/architecture.md "Delivery"), the commit order done by `_commit`:
 1. Hand every finished record and dead letter to the producer (records as JSON batches, all records
    of shard k to rewards partition k mod P, so every copy of a request's record lands in one
    partition).
 2. producer.flush() and check every send: the broker has acknowledged them (acks=all), so they are
    durable. A failed send raises; nothing is committed and the process exits non-zero.
 3. For every assigned input partition, the commit offset is the lowest offset that open state still
    depends on (impressions, attributed clicks/orders, waiting orphans), or the position if none.
 4. Commit those offsets synchronously.
After a crash the next member resumes from step 4's offsets and replays the open requests' events.
Requests already finalised are learned back from the rewards topic on start (`_recover`), so their
replayed events are recognised as redeliveries and their records are not produced again; the
remaining window (a crash between 2 and 4 on records produced after the last start) can leave a
second copy, which every reader drops (stream/dedup.py).
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pyarrow as pa

from streamrl.configs.schema import StreamrlConfig
from streamrl.stream import kafka_io
from streamrl.stream.events import ItemEvent, Malformed, decode_event, limits_of
from streamrl.stream.join import Enricher, Finalized, JoinState, Source, dead_letter
from streamrl.stream.metrics import ProcessMetrics
from streamrl.stream.records import SKIPPED_BATCHES, decode_or_skip

log = logging.getLogger("streamrl.joiner")


class JoinerError(RuntimeError):
    pass


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Failed(Exception):
    """An unexpected error while joining one message (a poison message, after its retries)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class _Rebalance(kafka_io.ConsumerRebalanceListener):
    def __init__(self, joiner: Joiner) -> None:
        self.joiner = joiner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.joiner.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.joiner.on_assigned(list(assigned))


class Joiner:
    def __init__(self, cfg: StreamrlConfig) -> None:
        self.cfg = cfg
        self.topics = cfg.kafka.topics
        self.enricher = Enricher(cfg.join)
        self.shards: dict[int, JoinState] = {}
        self.finalized_by_part: dict[int, dict[str, Finalized]] = {}
        self.counts: Counter[str] = Counter()
        self.pending: dict[int, list[pa.Table]] = {}  # input partition -> finished records
        self.pending_dead: list[dict[str, Any]] = []
        self.futures: list[Any] = []
        self.last_commit = time.monotonic()
        self.inputs = (self.topics.impressions, self.topics.clicks, self.topics.orders)
        self.lag: dict[tuple[str, int], int] = {}  # (topic, partition) -> high watermark - position
        self.events_in: Counter[str] = Counter()  # per input topic
        self.limits = limits_of(cfg.join)
        self.skew_ms = int(cfg.join.max_event_skew_s * 1000)
        self.age_ms = int(cfg.join.max_event_age_s * 1000)
        self.poison_tries = cfg.joiner.poison_tries

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        k = self.cfg.kafka
        kafka_io.ensure_topics(k, [*self.inputs, self.topics.items, self.topics.rewards, self.topics.dlq])
        kafka_io.check_copartitioned(k, self.inputs)  # refused at start, before anything is read
        self.producer = kafka_io.make_producer(k, self.topics.rewards)
        self.out_parts = len(self.producer.partitions_for(self.topics.rewards))
        self._recover()
        # Long-lived join state is mostly acyclic; a full collection over it every few hundred
        # allocations cost ~40 % of the loop (bench/join_throughput.py). Collect far less often.
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        extra = {"group_instance_id": k.group_instance_id} if k.group_instance_id else {}
        self.consumer = kafka_io.make_consumer(
            k, k.join_group, max_poll_records=self.cfg.joiner.max_poll_records, **extra
        )
        self.consumer.subscribe(list(self.inputs), listener=_Rebalance(self))

    def _recover(self) -> None:
        """Fold the recent rewards topic back in: CTR counts, histories, finalised request ids."""
        since = _now_ms() - int(self.cfg.joiner.recovery_lookback_s * 1000)
        first: set[str] = set()
        for part, offset, value in kafka_io.read_span(self.cfg.kafka, self.topics.rewards, since):
            table = decode_or_skip(value, "joiner recovery", (part, offset))
            if table is None:
                continue
            rids = table.column("request_id").to_pylist()
            fresh = [rid not in first for rid in rids]  # a second copy of a record is skipped
            first.update(rids)
            if not all(fresh):
                table = table.filter(pa.array(fresh))
            stash = self.finalized_by_part.setdefault(part, {})
            stash.update(self.enricher.absorb_table(table))
        self.counts["recovered_records"] = len(first)
        log.info("recovered %d records from %s", len(first), self.topics.rewards)

    # -- rebalance ----------------------------------------------------------------------------
    def on_revoked(self, revoked: list[Any]) -> None:
        """Drop the revoked shards and their unsent records. Nothing is committed here (kafka-python
        3 forbids blocking calls in a rebalance callback): the next owner resumes from our last
        commit, replays those requests and produces their records once."""
        for tp in revoked:
            shard = self.shards.pop(tp.partition, None)
            self.pending.pop(tp.partition, None)
            if shard is not None:  # finalised ids are facts whoever owns the shard next
                stash = self.finalized_by_part.setdefault(tp.partition % self.out_parts, {})
                stash.update(shard.finalized)
                horizon = shard.watermark - shard.retention_ms  # what the shard would forget
                for rid in [r for r, f in stash.items() if f.ts_ms < horizon]:
                    del stash[rid]

    def on_assigned(self, assigned: list[Any]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def _shard(self, partition: int) -> JoinState:
        shard = self.shards.get(partition)
        if shard is None:
            shard = JoinState(self.cfg.join, self.enricher, self.inputs)
            shard.finalized.update(self.finalized_by_part.get(partition % self.out_parts, {}))
            self.shards[partition] = shard
        return shard

    # -- loop ---------------------------------------------------------------------------------
    def step(self) -> None:
        batch = self.consumer.poll(timeout_ms=self.cfg.joiner.poll_timeout_ms)
        now = _now_ms()
        for tp, msgs in batch.items():
            self._consume(tp, msgs, now)
        self._mark_caught_up(now)
        for shard in self.shards.values():
            shard.tick(now)
        self._collect()
        if time.monotonic() - self.last_commit >= self.cfg.joiner.commit_interval_s:
            self._commit()

    def _consume(self, tp: Any, msgs: list[Any], now: int) -> None:
        shard = self._shard(tp.partition)
        topic, part = tp.topic, tp.partition
        self.events_in[topic] += len(msgs)
        for m in msgs:
            src = Source(topic, part, m.offset)
            for attempt in range(1, self.poison_tries + 1):
                try:
                    self._one(shard, m.value, src, topic, now)
                    break
                except _Failed as failed:  # a poison message: retried, then set aside, never a crash
                    exc = failed.cause
                    log.warning("event %s failed (try %d/%d): %r", src, attempt, self.poison_tries, exc)
                    if attempt == self.poison_tries:
                        shard.counts["dead_poison"] += 1
                        shard.dead.append(
                            dead_letter(f"poison: {type(exc).__name__}: {str(exc)[:300]}", m.value, src)
                        )

    def _one(self, shard: JoinState, value: bytes | None, src: Source, topic: str, now: int) -> None:
        """One message: bounds (stream/events.py, join.max_event_*), then the join."""
        try:
            ev = decode_event(value, self.limits)
            if isinstance(ev, ItemEvent):
                raise Malformed(f"item event on request topic {topic}")
        except Malformed as exc:
            shard.counts["dead_malformed"] += 1
            shard.dead.append(dead_letter(exc.reason, value, src))
            return
        except Exception as exc:
            raise _Failed(exc) from exc
        if ev.ts_ms > now + self.skew_ms:  # would move the watermark past every open request
            shard.counts["dead_future"] += 1
            ahead = (ev.ts_ms - now) / 1000
            reason = f"future: ts_ms {ahead:.0f} s ahead of the joiner's clock (join.max_event_skew_s)"
            shard.dead.append(dead_letter(reason, value, src, event_id=ev.event_id))
            return
        if self.age_ms and ev.ts_ms < now - self.age_ms:
            shard.counts["dead_too_old"] += 1
            reason = f"too_old: ts_ms {(now - ev.ts_ms) / 1000:.0f} s behind the joiner's clock"
            shard.dead.append(dead_letter(reason, value, src, event_id=ev.event_id))
            return
        try:
            shard.on_event(ev, value, src, topic, now)
        except Exception as exc:
            shard.forget_event(ev.event_id)
            raise _Failed(exc) from exc

    def _mark_caught_up(self, now: int) -> None:
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            shard = self._shard(tp.partition)
            position = self.consumer.position(tp)
            self.lag[(tp.topic, tp.partition)] = max(hw - position, 0)
            shard.set_caught_up(tp.topic, position >= hw, now)

    def _collect(self) -> None:
        for part, shard in self.shards.items():
            records, dead = shard.drain()
            if len(records):
                self.pending.setdefault(part, []).append(records.table())
            self.pending_dead.extend(dead)

    def _commit(self) -> None:
        """The commit order of the module docstring, steps 1–4."""
        self._collect()
        k, limit = self.cfg.joiner.max_batch_records, self.cfg.joiner.max_batch_bytes
        for part, tables in self.pending.items():  # 1.
            table = pa.concat_tables(tables)
            for batch, data in kafka_io.split_by_bytes(table, k, limit):
                if len(data) > limit:  # one record alone over the limit: refused, not a crash loop
                    rid = batch.column("request_id")[0].as_py()
                    self.counts["dead_record_too_big"] += 1
                    reason = f"record_too_big: {len(data)} bytes encoded, over joiner.max_batch_bytes={limit}"
                    self.pending_dead.append({"reason": reason, "request_id": rid, "raw": None})
                    continue
                self.futures.append(
                    self.producer.send(
                        self.topics.rewards,
                        value=data,
                        partition=part % self.out_parts,
                        headers=[("content-type", kafka_io.CONTENT_TYPE)],
                    )
                )
                self.counts["records_out"] += batch.num_rows
        for d in self.pending_dead:
            self.futures.append(self.producer.send(self.topics.dlq, value=orjson.dumps(d)))
        self.counts["dead_out"] += len(self.pending_dead)
        self.pending, self.pending_dead = {}, []
        self.producer.flush()  # 2.
        failed = [f for f in self.futures if f.failed()]
        self.futures = []
        if failed:
            raise JoinerError(f"{len(failed)} sends failed, first: {failed[0].exception!r}")
        offsets = {}
        held_by_shard: dict[int, dict[tuple[str, int], int]] = {}
        for tp in self.consumer.assignment():  # 3.
            if tp.partition not in held_by_shard:
                held_by_shard[tp.partition] = self._shard(tp.partition).held_offsets()
            held = held_by_shard[tp.partition].get((tp.topic, tp.partition))
            position = self.consumer.position(tp)
            offsets[tp] = kafka_io.OffsetAndMetadata(
                position if held is None else min(held, position), "", -1
            )
        if offsets:
            self.consumer.commit(offsets)  # 4.
        self.last_commit = time.monotonic()

    # -- shutdown -----------------------------------------------------------------------------
    def shutdown(self, clean: bool = True) -> None:
        """Drain: what the watermark finalised is produced and committed; open requests are left
        uncommitted, to be replayed by the next start. After a failure (`clean=False`) nothing is
        produced or committed: the state may be part-way through a batch, so the next start
        re-reads from the last commit instead of skipping what this one had not finished."""
        try:
            if clean:
                self._commit()
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=10)

    def state_bytes(self, sample: int = 64) -> int:
        """Join state in memory, estimated: a sample of open requests deep-sized, times their count."""
        from streamrl.stream.metrics import deep_size

        total = 0
        for shard in self.shards.values():
            n = len(shard.open)
            if n:
                picked = list(itertools.islice(iter(shard.open.values()), sample))
                total += int(sum(deep_size(o) for o in picked) / len(picked) * n)
        return total

    def metrics(self) -> dict[str, tuple[str, Any]]:
        s = self.stats()
        dead = {
            (("reason", k[5:]),): float(v) for k, v in s.items() if k.startswith("dead_") and k != "dead_out"
        }
        fin = {(("reason", k[10:]),): float(v) for k, v in s.items() if k.startswith("finalized_")}
        return {
            "streamrl_joiner_consumer_lag": (
                "Messages behind the fetch high watermark, per input partition",
                {(("topic", t), ("partition", str(p))): float(v) for (t, p), v in sorted(self.lag.items())},
            ),
            "streamrl_joiner_events_in_total": (
                "Events read, per input topic",
                {(("topic", t),): float(v) for t, v in sorted(self.events_in.items())},
            ),
            "streamrl_joiner_records_out_total": ("Reward records produced", float(s["records_out"])),
            "streamrl_joiner_dead_letters_out_total": ("Dead letters produced", float(s["dead_out"])),
            "streamrl_joiner_dead_letters_total": ("Dead letters by reason", dead),
            "streamrl_joiner_finalized_total": ("Requests finalised, by why", fin),
            "streamrl_joiner_open_requests": ("Requests still open in the join", float(s["open_requests"])),
            "streamrl_joiner_duplicates_total": ("Duplicate events dropped", float(s["duplicates"])),
            "streamrl_joiner_bad_reward_messages_total": (
                "Rewards-topic messages skipped on recovery as not streamrl v1 record batches",
                float(SKIPPED_BATCHES["joiner recovery"]),
            ),
            "streamrl_joiner_late_events_total": (
                "Events dead-lettered for arriving after their request was final",
                float(sum(v for k, v in s.items() if k.startswith("dead_late"))),
            ),
            "streamrl_joiner_evicted_total": (
                "Requests finalised early by the open bound",
                float(s["evicted"]),
            ),
        }

    def stats(self) -> Counter[str]:
        total: Counter[str] = Counter(self.counts)
        for shard in self.shards.values():
            total.update(shard.counts)
            total["open_requests"] += len(shard.open)
        return total


def run_joiner(cfg: StreamrlConfig, stop: threading.Event, archive: bool = True) -> int:
    """`streamrl join`: the joiner loop, with the archiver as a second step of the same loop."""
    from streamrl.stream.archive import Archiver

    joiner = Joiner(cfg)
    archiver = Archiver(cfg.kafka, cfg.archive) if archive else None
    try:
        joiner.setup()
        if archiver:
            archiver.setup()
    except kafka_io.TopicsError as exc:  # a layout the join cannot run on: refused, exit 2
        log.error("joiner refused to start: %s", exc)
        return 2
    except Exception:
        log.exception("joiner setup failed")
        return 1
    last_log = last_bytes_at = time.monotonic()
    last_pub = 0.0  # the first pass publishes: /healthz carries lag from the start
    state_bytes = 0
    metrics = ProcessMetrics("joiner", cfg.metrics.stale_after_s)
    metrics.serve(cfg.metrics.host, cfg.metrics.joiner_port)
    code = 0
    clean = False
    try:
        while not stop.is_set():
            joiner.step()
            if archiver:
                archiver.step()
            if time.monotonic() - last_pub >= cfg.metrics.publish_s:
                last_pub = time.monotonic()
                if last_pub - last_bytes_at >= 10:
                    last_bytes_at, state_bytes = last_pub, joiner.state_bytes()
                values = joiner.metrics()
                values["streamrl_joiner_state_bytes"] = (
                    "Join state in memory, estimated by sampling",
                    state_bytes,
                )
                lag = sum(joiner.lag.values())
                stats = joiner.stats()
                metrics.publish(
                    values,
                    {
                        "ok": True,
                        "lag": lag,
                        "records_out": stats["records_out"],
                        "dead_out": stats["dead_out"],
                        "open_requests": stats["open_requests"],
                        "events_in": sum(joiner.events_in.values()),
                    },
                )
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("stats %s", orjson.dumps(dict(joiner.stats())).decode())
        clean = True
    except Exception:  # any failure: exit non-zero without committing past what was not finished
        log.exception("joiner failed; nothing committed past the last durable commit")
        code = 1
    finally:
        try:
            joiner.shutdown(clean)
            if archiver:
                archiver.close()
        except Exception:
            log.exception("shutdown failed")
            code = 1
    log.info("stopped %s", orjson.dumps(dict(joiner.stats())).decode())
    metrics.stop()
    return code
