"""`streamrl learn --sids DIR [--out RUN_DIR]` without `--records`: the learner on the live rewards topic.

setup → loop → shutdown.

Setup: resume from the newest checkpoint in RUN_DIR/checkpoints that verifies (a corrupt one is
skipped with a log line), else start from `learn.init_from` or a fresh policy; with no checkpoint
yet and `learn.warm_start` set, warm start (rl/warm.py: SFT on logged records, save, push through
the gate) before anything else; then start the scheduler (apscheduler, coalesce,
max_instances=1, misfire grace = the period): a checkpoint tick every `checkpoint.every_s` and a
push every `push.every_s` (or `push.cron`).

Loop, one iteration = one step boundary:
 1. the reward weights in force (rewards/weights.py; a new version applies from this step);
 2. a `rollback --reset-learner` request not yet honoured: continue from that version's checkpoint
    (the step counter keeps counting up, so checkpoints never collide);
 3. read records (each request once); `push.heldout_percent` of engaged requests, chosen by a hash
    of request_id, go to the held-out set the push gate evaluates on and are never trained on; the
    rest feed the CTR table and a bounded buffer (`learn.buffer_size`, none older than
    `buffer_max_age_s` of event time behind the newest);
 4. once the buffer holds B prompts: sample B, one step, one JSON line of metrics (with
    weights_version);
 5. checkpoint when `checkpoint.every_steps` steps or the time tick have passed: write it (atomic,
    with offsets and weights version in the manifest), write the held-out set, then commit offsets
    (offsets never run ahead of saved training), then apply retention.
SIGTERM: finish the step, checkpoint, commit, stop the scheduler, exit 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from streamrl.checkpoints.push import push
from streamrl.checkpoints.serving import ServingError, ServingRoot
from streamrl.checkpoints.store import BUFFER, LEARNER_STATE, CheckpointError, CheckpointStore
from streamrl.configs.schema import StreamrlConfig
from streamrl.rewards.weights import WeightsStore, WeightsWatcher, default_policy
from streamrl.rl import distributed
from streamrl.rl.buffer import SampleBuffer
from streamrl.rl.catalog_watch import CatalogWatch
from streamrl.rl.checkpointing import InitError, new_learner, pin_codebook, resolve, save
from streamrl.rl.curves import Curves
from streamrl.rl.gate import heldout_evaluator
from streamrl.rl.learner import Learner, pick_device
from streamrl.rl.learner_metrics import publish
from streamrl.rl.warm import run_warm_start, warm_records
from streamrl.stream.kafka_io import RewardReader
from streamrl.stream.metrics import ProcessMetrics
from streamrl.stream.records import RECORD_SCHEMA, read_records, write_parquet_atomic

log = logging.getLogger("streamrl.learner")
HELDOUT = "heldout.parquet"


def weights_store(cfg: StreamrlConfig) -> WeightsStore:
    lc = cfg.learn
    return WeightsStore(
        Path(cfg.weights.dir), default_policy(lc.rewards, lc.w_item, cfg.join.v_click, cfg.join.v_order)
    )


def is_heldout(request_id: str, percent: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
    return (h % 10_000) < percent * 100


class _SyncedStop(threading.Event):
    """Rank 0's stop flag on every rank, asked at the same points (rl/distributed.py): the ranks
    leave a loop at the same step, whenever each received its own SIGTERM."""

    def __init__(self, d: distributed.Dist, stop: threading.Event) -> None:
        super().__init__()
        self.d, self.stop = d, stop

    def is_set(self) -> bool:
        return bool(distributed.broadcast(self.d, self.stop.is_set()))


class StreamingLearner:
    def __init__(
        self,
        cfg: StreamrlConfig,
        sids_dir: Path,
        run_dir: Path,
        seed: int = 0,
        dist: distributed.Dist = distributed.SINGLE,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.run_dir = run_dir
        self.sids_dir = sids_dir
        self.seed = seed
        self.store = CheckpointStore(run_dir)
        self.serving = ServingRoot(Path(cfg.serving.root), cfg.serving.model)
        self.watcher = WeightsWatcher(weights_store(cfg), log, cfg.weights.poll_s)
        latest = self.store.latest_valid()
        self.learner = new_learner(
            cfg.learn,
            sids_dir,
            seed,
            resume_from=latest[0].path if latest else None,
            init_from=resolve(Path(cfg.learn.init_from)) if cfg.learn.init_from and not latest else None,
            policy=self.watcher.policy,
            join=cfg.join,
            anchor_later=cfg.learn.warm_start.enabled and not latest,
        )
        self._join(self.learner)
        if dist.leader:
            pin_codebook(self.learner, run_dir)
        if latest:
            log.info("resumed from checkpoint %d (%s)", latest[0].step, latest[0].path)
        self.needs_warm_start = cfg.learn.warm_start.enabled and not latest
        self.warm: dict[str, Any] = {}  # warm-start progress, for /healthz
        self.warm_ids: list[str] = []  # request_ids the warm start read (the reader skips them)
        lc = cfg.learn
        self.buffer = SampleBuffer(lc.buffer_size, lc.buffer_max_age_s, lc.max_reuse)
        self.heldout: deque[dict[str, Any]] = deque(maxlen=cfg.push.heldout_max)
        self.heldout_ids: set[str] = set()  # a request read twice (a restart) is held out once
        self.rng = random.Random(seed)
        self.catalog: CatalogWatch | None = None  # rank 0: new items on the items topic get SIDs
        self.idle_s = 0.0  # time the loop waited with too few fresh prompts to step (max_reuse)
        self.newest = 0
        if latest:
            self._restore(latest[0].path)
        self.last_saved_step = self.learner.steps
        self.refused: Counter[str] = Counter()  # records refused, by reason
        self.push_outcomes: Counter[str] = Counter()  # scheduled pushes, by PushResult.outcome or error
        self._dlq: Any = None
        self.tick = threading.Event()  # the scheduler's checkpoint tick
        self.last_metrics: dict[str, float] = {}
        self._next_reset_check = 0.0
        self.metrics = ProcessMetrics("learner", cfg.metrics.stale_after_s)
        # RUN_DIR/tensorboard (rl/curves.py), written by rank 0
        self.curves = Curves(run_dir, cfg.learn.tensorboard and dist.leader)
        self.records_in = 0
        self.rollouts = 0
        self.rate_window: deque[tuple[float, int]] = deque(maxlen=64)  # (time, rollouts so far)
        self.last_publish = 0.0
        self.last_error: str | None = None

    def _join(self, learner: Learner) -> None:
        """A learner of this process group: its rank, and rank 0's parameters."""
        learner.dist = self.dist
        distributed.sync_parameters(self.dist, learner.model)
        if learner.ref is not None:
            distributed.sync_parameters(self.dist, learner.ref)

    def _restore(self, checkpoint: Path) -> None:
        """What a resume picks up besides the model: the held-out set (reloaded, then only extended),
        the sampling buffer with its use counts, and the buffer's sampling generator, so the first
        steps after a restart see the same kind of data the last ones did."""
        if (self.run_dir / HELDOUT).exists():
            for r in read_records([self.run_dir / HELDOUT]):
                self._hold_out(r)
        if (checkpoint / BUFFER).exists():
            n = self.buffer.load(checkpoint / BUFFER)
            self.newest = max((r["ts_ms"] for r, _ in self.buffer.entries), default=0)
            log.info("buffer refilled with %d records from checkpoint %s", n, checkpoint.name)
        state = (
            json.loads((checkpoint / LEARNER_STATE).read_text())
            if (checkpoint / LEARNER_STATE).exists()
            else {}
        )
        if "stream_rng" in state:
            version, internal, gauss = state["stream_rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        log.info("held-out set: %d records reloaded", len(self.heldout))

    # -- the scheduler -----------------------------------------------------------------------
    def start_scheduler(self) -> Any:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        sched = BackgroundScheduler(timezone="UTC")
        ck = self.cfg.checkpoint
        if ck.every_s:
            sched.add_job(
                self.tick.set,
                IntervalTrigger(seconds=ck.every_s),
                id="checkpoint",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(int(ck.every_s), 1),
            )
        pc = self.cfg.push
        if pc.enabled:
            trigger: Any = CronTrigger.from_crontab(pc.cron, timezone="UTC") if pc.cron else None
            period = 3600 if pc.cron else int(pc.every_s or 60)
            sched.add_job(
                self.scheduled_push,
                trigger or IntervalTrigger(seconds=pc.every_s),
                id="push",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(period, 1),
            )
        sched.start()
        return sched

    def scheduled_push(self) -> None:
        pc = self.cfg.push
        try:
            result = push(
                self.store,
                self.serving,
                evaluate=heldout_evaluator(
                    self.run_dir / HELDOUT, pc.eval_records, pc.eval_beam, self.cfg.learn
                ),
                max_regression=pc.max_regression,
                min_distinct_top1=pc.min_distinct_top1,
                alpha=pc.alpha,
                min_heldout=pc.min_heldout,
                scheduled=True,
                notify_url=pc.notify_url,
                verify_timeout_s=pc.verify_timeout_s,
            )
            self.last_error = None
            self.push_outcomes[result.outcome] += 1
            self.curves.push(result.as_dict(), self.learner.steps)
            log.info("scheduled push: %s", json.dumps(result.as_dict()))
        except Exception as exc:
            self.last_error = f"scheduled push failed: {exc}"
            self.push_outcomes["error"] += 1
            log.exception("scheduled push failed")

    def warm_start(self, stop: threading.Event) -> bool:
        """SFT on the logged records, then a checkpoint and a push through the gate (no commit: the
        reader has not read anything yet). A look-back that finds nothing to learn from yet waits
        for records (a new deployment); SIGTERM meanwhile, or during the SFT steps, stops without
        saving (the next start warm starts again). Returns whether it finished."""
        wc, d = self.cfg.learn.warm_start, self.dist
        while True:
            records = distributed.broadcast(d, warm_records(wc, self.cfg.kafka) if d.leader else None)
            if any(self.learner.usable(r) for r in records) or wc.records:
                break
            log.warning(
                "warm start: no usable records in the last %s s of the rewards topic yet; waiting",
                wc.lookback_s,
            )
            self._publish(force=True)  # waiting is healthy: the heartbeat goes on
            if distributed.broadcast(d, stop.wait(10.0) if d.leader else None):
                return False
        if d.on:
            stop = _SyncedStop(d, stop)
        log.info("warm start on %d records, %d SFT steps", len(records), wc.steps)
        self.warm_ids = [r["request_id"] for r in records]
        train = self._split(records)

        def progress(step: int, of: int, loss: float) -> None:
            self.warm = {"step": step, "of": of, "loss": loss}
            self.curves.scalars("warm_start", {"loss": loss}, step)
            self._publish()

        self.warm = {"step": 0, "of": wc.steps}
        self._publish(force=True)
        summary = run_warm_start(self.learner, train, wc, self.seed, progress, stop)
        if summary is None:
            log.warning("warm start stopped before its last step: nothing saved")
            return False
        self.buffer.extend(r for r in train if self.learner.usable(r))  # RL starts on them
        self.newest = max([self.newest, *(r["ts_ms"] for r in records)])
        self.last_saved_step = self.learner.steps
        self.needs_warm_start = False
        if not d.leader:
            return True
        save(self.store, self.learner, None, {"warm_start_loss": summary["loss"]}, {"warm_start": summary})
        self._write_heldout()
        if self.cfg.push.enabled:
            self.scheduled_push()  # the first push: the warm-start model, through the gate
        return True

    # -- the loop ----------------------------------------------------------------------------
    def run(self, reader: RewardReader | None, stop: threading.Event, max_steps: int | None = None) -> int:
        """The loop; `reader` is rank 0's (None on the other ranks, which get what it read)."""
        lc, ck = self.cfg.learn, self.cfg.checkpoint
        taken = 0
        if self.dist.on:  # the weights each rank read at start may differ: rank 0's count
            self.learner.policy = distributed.broadcast(self.dist, self.learner.policy)
        while True:
            began = time.monotonic()
            # rank 0 looks at the world; every rank then applies the same (rl/distributed.py)
            news = self._news(reader, stop.is_set() or (max_steps is not None and taken >= max_steps))
            if news["stop"]:
                break
            if news["policy"] is not None:
                self.learner.policy = news["policy"]  # 1
            if news["reset"] is not None:
                self._reset_to(*news["reset"])  # 2
            if news["items"]:
                self._add_items(news["items"])
            learner = self.learner
            self._read(news["records"])  # 3
            if not self.buffer.ready(lc.batch_prompts):  # 4: too few fresh prompts: idle, not overfit
                self.idle_s += time.monotonic() - began
            else:
                stats = learner.step(learner.make_batch(self.buffer.sample(self.rng, lc.batch_prompts)))
                self.last_metrics = stats.values
                taken += 1
                if not stats.skipped and lc.algo != "sft":
                    self.rollouts += lc.batch_prompts * lc.group_size
                line = {
                    "step": learner.steps,
                    "ts": round(time.time(), 3),
                    "skipped_total": learner.skipped,
                    "buffer": len(self.buffer),
                }
                if self.dist.leader:  # one line per step, from rank 0
                    print(json.dumps({**line, "heldout": len(self.heldout), **stats.values}), flush=True)
                self.curves.scalars(
                    "train", {**line, "heldout": len(self.heldout), **stats.values}, learner.steps
                )
            self._publish()
            due = ck.every_steps is not None and learner.steps - self.last_saved_step >= ck.every_steps
            if (due or news["tick"]) and learner.steps > self.last_saved_step:  # 5
                self.checkpoint(reader)
        if self.learner.steps > self.last_saved_step or not self.store.checkpoints():
            self.checkpoint(reader)
        return 0

    def _news(self, reader: RewardReader | None, stop: bool) -> dict[str, Any]:
        """Rank 0: stop, the weights in force (when they changed), a rollback reset to honour, the
        records read, the checkpoint tick; every rank receives rank 0's."""
        news: dict[str, Any] | None = None
        if self.dist.leader:
            policy = self.watcher.poll()
            news = {
                "stop": stop,
                "policy": policy if policy is not self.learner.policy else None,
                "reset": self._reset_request(),
                "records": reader.poll(200) if reader is not None and not stop else [],
                "tick": self.tick.is_set(),
                "items": self.catalog.poll(self.learner) if self.catalog is not None and not stop else [],
            }
        return dict(distributed.broadcast(self.dist, news))

    def _add_items(self, rows: list[Any]) -> None:
        """New catalog items (rank 0 assigned their SIDs) into every rank's learner; rank 0 writes
        the grown codebook as its next version (rl/catalog_watch.py)."""
        added = self.learner.add_items(rows)
        if added and self.catalog is not None:
            self.catalog.added += added
            self.catalog.dirty = True  # written as the next version at the next checkpoint

    def _publish(self, force: bool = False) -> None:
        publish(self, force)

    def _split(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Held-out requests (by request hash) to the gate's set; the rest returned for training."""
        pc = self.cfg.push
        train = []
        for r in records:
            engaged = any(i["clicked"] or i["ordered"] for i in r["items"])
            if engaged and pc.heldout_percent and is_heldout(r["request_id"], pc.heldout_percent):
                self._hold_out(r)
            else:
                train.append(r)
        return train

    def _hold_out(self, record: dict[str, Any]) -> None:
        """Into the gate's held-out set, once per request (the gate pairs requests: a duplicate
        would count twice), the oldest leaving past push.heldout_max."""
        rid = record["request_id"]
        if rid in self.heldout_ids:
            return
        if len(self.heldout) == self.heldout.maxlen:
            self.heldout_ids.discard(self.heldout[0]["request_id"])
        self.heldout.append(record)
        self.heldout_ids.add(rid)

    def _admit(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records the learner cannot use — none shown, or over the join's bounds (a producer other
        than the joiner) — are refused: counted by reason and dead-lettered (without the record)."""
        jc = self.cfg.join
        ok = []
        for r in records:
            n_items, query = len(r.get("items") or ()), r.get("query") or ""
            if not n_items:
                reason = "no_items: a record without shown items"
            elif n_items > jc.max_items:
                reason = f"too_many_items: {n_items} items, over join.max_items={jc.max_items}"
            elif len(query) > jc.max_query_chars:
                reason = (
                    f"query_too_long: {len(query)} characters, over join.max_query_chars={jc.max_query_chars}"
                )
            else:
                ok.append(r)
                continue
            self.refused[reason.split(":")[0]] += 1
            self._dead_letter({"reason": f"learner refused: {reason}", "request_id": r.get("request_id")})
        return ok

    def _dead_letter(self, letter: dict[str, Any]) -> None:
        if not self.dist.leader:  # rank 0 read the same record and dead-letters it
            return
        try:
            if self._dlq is None:
                from streamrl.stream import kafka_io

                self._dlq = kafka_io.make_producer(self.cfg.kafka, self.cfg.kafka.topics.dlq)
            self._dlq.send(self.cfg.kafka.topics.dlq, value=orjson.dumps(letter))
        except Exception as exc:  # the count and the log line stay even when the broker does not
            log.warning("could not dead-letter %s: %r", letter, exc)
        log.warning("%s", letter["reason"])

    def _read(self, records: list[dict[str, Any]]) -> None:
        self.records_in += len(records)
        records = self._admit(records)
        train = self._split(records)
        self.learner.observe(train)
        self.buffer.extend(r for r in train if self.learner.usable(r))
        self.newest = max([self.newest, *(r["ts_ms"] for r in records)])
        self.buffer.expire(self.newest)

    def checkpoint(self, reader: RewardReader | None) -> None:
        """1. checkpoint (atomic); 2. the held-out set; 3. commit offsets; 4. retention. Rank 0's
        work: the other ranks hold the same state and only note the step."""
        self.tick.clear()
        if not self.dist.leader or reader is None:
            self.last_saved_step = self.learner.steps
            return
        if self.catalog is not None and self.catalog.dirty:
            self.catalog.save_version(self.learner, self.run_dir)
        version, internal, gauss = self.rng.getstate()
        path = save(
            self.store,
            self.learner,
            reader.positions(),
            self.last_metrics,
            extra={"stream_rng": [version, list(internal), gauss]},
            more=lambda folder: self.buffer.save(folder / BUFFER),
        )
        self._write_heldout()
        reader.commit()
        self.last_saved_step = self.learner.steps
        try:
            keep = self.serving.pushed_steps()
        except (OSError, ValueError):
            keep = set()
        self.store.retain(self.cfg.checkpoint.keep_last, keep)
        log.info("checkpoint at step %d in %s", self.learner.steps, path)

    def _write_heldout(self) -> None:
        if self.heldout:
            table = pa.Table.from_pylist(list(self.heldout), schema=RECORD_SCHEMA)
            write_parquet_atomic(table, self.run_dir / HELDOUT)

    def _maybe_reset(self) -> None:
        """Honour a pending `rollback --reset-learner` now (one process; the loop goes through `_news`)."""
        request = self._reset_request()
        if request is not None:
            self._reset_to(*request)

    def _reset_request(self) -> tuple[int, str] | None:
        """A `rollback --reset-learner` not yet honoured: (version, request id), checked each second."""
        now = time.monotonic()
        if now < self._next_reset_check:
            return None
        self._next_reset_check = now + 1.0
        try:
            policy = self.serving.policy()
        except ServingError as exc:
            log.error("cannot read serving policy: %s", exc)
            return None
        rid = policy.get("request_id")
        if (
            policy.get("mode") != "pinned"
            or not policy.get("reset_learner")
            or rid in self.learner.resets_done
        ):
            return None
        return int(policy["version"]), str(rid)

    def _reset_to(self, version: int, rid: str) -> None:
        old = self.learner
        try:
            fresh = new_learner(
                self.cfg.learn,
                self.sids_dir,
                self.seed,
                resume_from=self.serving.version_path(version),
                policy=old.policy,
                join=self.cfg.join,
            )
        except (CheckpointError, OSError, ValueError) as exc:
            log.error("reset to version %d refused, continuing as before: %s", version, exc)
            fresh = None
        if not all(distributed.gather(self.dist, fresh is not None)):  # every rank resets, or none
            old.resets_done.add(str(rid))
            return
        assert fresh is not None
        # the codebook only grows: items added after that version keep their SIDs
        carried = fresh.add_items([old.item_row(i) for i in old.book.sids if i not in fresh.book.sids])
        if carried and self.catalog is not None:
            self.catalog.dirty = True  # the next checkpoint writes them as the codebook's next version
        self._join(fresh)
        if self.dist.leader:
            pin_codebook(fresh, self.run_dir)
        fresh.steps = max(old.steps, fresh.steps)  # checkpoint steps only grow
        fresh.lr_origin = fresh.steps  # a fresh optimiser: the schedule (warm-up first) starts again
        fresh.resets_done = {*old.resets_done, str(rid)}
        fresh.ctr = old.ctr  # what the stream taught about CTR is not undone by a rollback
        self.learner = fresh
        if self.dist.leader:
            self.serving.record("learner_reset", version=version, step=fresh.steps, request_id=rid)
        log.warning("learner reset to serving version %d (request %s)", version, rid)


def run_streaming(
    cfg: StreamrlConfig,
    sids_dir: Path,
    out: Path | None,
    stop: threading.Event,
    max_steps: int | None = None,
    seed: int = 0,
) -> int:
    """The streaming learner; under torchrun, one rank of the group (rl/distributed.py)."""
    d = distributed.from_env(pick_device(cfg.learn.device))
    if cfg.learn.batch_prompts % d.world:
        raise InitError(
            f"learn.batch_prompts={cfg.learn.batch_prompts} (the global batch) does not divide into "
            f"{d.world} ranks: make it a multiple of the world size"
        )
    try:
        return _run(cfg, sids_dir, out or Path(cfg.learn.run_dir), stop, max_steps, seed, d)
    finally:
        distributed.close(d)


def _run(
    cfg: StreamrlConfig,
    sids_dir: Path,
    run_dir: Path,
    stop: threading.Event,
    max_steps: int | None,
    seed: int,
    d: distributed.Dist,
) -> int:
    sl = StreamingLearner(cfg, sids_dir, run_dir, seed, d)
    if d.leader:
        sl.metrics.serve(cfg.metrics.host, cfg.metrics.learner_port)
    sl._publish(force=True)  # /metrics and /healthz answer from the start
    if sl.needs_warm_start:
        try:  # before the reader and the scheduler: no push precedes it
            if not sl.warm_start(stop):
                sl.curves.close()
                sl.metrics.stop()
                return 0
        except BaseException:
            sl.curves.close()
            sl.metrics.stop()
            raise
    reader = RewardReader(cfg.kafka, cfg.kafka.learn_group) if d.leader else None
    if reader is not None:
        for rid in sl.warm_ids:  # a look-back's records come again on the topic: learned once is enough
            reader.seen.first(rid)
    if d.leader and cfg.learn.follow_items:
        sl.catalog = CatalogWatch(cfg.kafka, cfg.kafka.topics.items, sl.learner)
    sched = sl.start_scheduler() if d.leader else None
    try:
        return sl.run(reader, stop, max_steps)
    finally:
        if sched is not None:
            sched.shutdown(wait=True)
        if reader is not None:
            reader.close()
        if sl.catalog is not None:
            sl.catalog.close()
        if sl._dlq is not None:
            sl._dlq.flush()
            sl._dlq.close()
        sl.curves.close()
        sl.metrics.stop()
