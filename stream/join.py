"""The impression ⋈ click ⋈ order join: pure state, clock passed in (docs/architecture.md).

Rules, as numbered in the docs:
 1. An impression opens a request. A click/order on (request_id, item_id) is attributed when the item
    was impressed and 0 <= ts - impression.ts <= window; otherwise it is dead-lettered
    `item_not_impressed` or `outside_window`.
 2. Watermark = min over the input streams still catching up of (highest ts seen on it), minus
    allowed_lateness; when every stream is caught up, the highest ts of any. With one stream (replay)
    this is exactly "highest ts seen minus lateness"; with partitions it stops a stream that the
    consumer happens to fetch ahead from making another stream's events late, so a replay after a
    crash attributes the same clicks as the first pass. A request is finalised when the watermark
    passes impression.ts + window, when no event has come for idle_finalize of the clock, or at the
    end of input.
 3. A click/order before its impression waits up to orphan_ttl of event time past its own ts, then
    is dead-lettered `orphan`.
 4. A repeated event_id is ignored (counted) — with the same content; with other content it is
    dead-lettered `reused_event_id` (two events must not share an id). A click/order for a
    finalised request is `late` —
    unless that request's record already has that flag (a redelivery, counted, not dead-lettered).
    So is one for an unknown request when the watermark has passed its own ts + window: every
    request it could belong to is finalised (and may be forgotten), so it cannot be an orphan.
    An impression for a request that is already open or finalised is a redelivery too.
 5. At most max_open_requests are open; the oldest are finalised early (`evicted`) to make room.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from streamrl.configs.schema import JoinConfig
from streamrl.rewards.ctr import CtrTable, prior_from
from streamrl.rewards.scores import co_score
from streamrl.stream.events import Action, Click, Impression
from streamrl.stream.records import RecordColumns

_NEG_INF = -(2**62)
_NONE: frozenset[str] = frozenset()


class Source(NamedTuple):
    """Where an event came from: a topic partition and offset, or a file (partition -1) and line."""

    stream: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        if self.partition < 0:
            return {"file": self.stream, "line": self.offset}
        return {"topic": self.stream, "partition": self.partition, "offset": self.offset}


def dead_letter(reason: str, raw: bytes | str | None, src: Source, **extra: Any) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return {"reason": reason, "raw": raw, "source": src.as_dict(), **extra}


@dataclass(slots=True)
class OpenRequest:
    imp: Impression
    item_ids: frozenset[str]
    clicked: set[str] = field(default_factory=set)
    ordered: set[str] = field(default_factory=set)
    held: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> offset


class Finalized(NamedTuple):
    ts_ms: int
    clicked: frozenset[str]
    ordered: frozenset[str]


class Enricher:
    """Member-wide state folded from finalised records: posterior CTR and users' click history."""

    def __init__(self, cfg: JoinConfig) -> None:
        self.ctr = CtrTable(prior_from(cfg.ctr), cfg.ctr.max_entries)
        self.history_len = cfg.history_len
        self.max_users = cfg.max_users
        self.v_click = cfg.v_click
        self.v_order = cfg.v_order
        self._history: OrderedDict[str, list[tuple[int, str]]] = OrderedDict()

    def history(self, user_id: str, before_ms: int) -> list[str]:
        """Clicked item_ids of the user's earlier finalised requests, newest first."""
        entries = self._history.get(user_id)
        if not entries:
            return []
        if entries[0][0] < before_ms:  # newest first: all are earlier (the usual case)
            return [item for _, item in entries[: self.history_len]]
        out: list[str] = []
        for ts, item in entries:
            if ts < before_ms:
                out.append(item)
                if len(out) == self.history_len:
                    break
        return out

    def build(self, finished: list[tuple[OpenRequest, int, str]], sink: RecordColumns) -> None:
        """Score finalised requests, in finalisation order, into `sink` (one record each), folding
        each into the state before the next: CTR and history see only earlier requests."""
        queries, flat_ids, flat_clicked, lengths, ts = [], [], [], [], []
        per_request = []
        for req, _, _ in finished:
            imp = req.imp
            ids = [it.item_id for it in imp.items]
            clicked = [i in req.clicked for i in ids] if req.clicked else [False] * len(ids)
            ordered = [i in req.ordered for i in ids] if req.ordered else [False] * len(ids)
            queries.append(imp.query)
            flat_ids.extend(ids)
            flat_clicked.extend(clicked)
            lengths.append(len(ids))
            ts.append(imp.ts_ms)
            per_request.append((ids, clicked, ordered))
        ctr = self.ctr.score_then_observe_batch(queries, flat_ids, flat_clicked, lengths, ts).tolist()
        vc, vo = self.v_click, self.v_order
        offset = 0
        for (req, now_ms, reason), (ids, clicked, ordered) in zip(finished, per_request, strict=True):
            imp = req.imp
            n = len(ids)
            co = [co_score(c, o, vc, vo) for c, o in zip(clicked, ordered, strict=True)]
            sink.add(
                imp.request_id,
                imp.user_id,
                imp.query,
                imp.ts_ms,
                now_ms,
                imp.keywords,
                self.history(imp.user_id, imp.ts_ms),
                reason,
                (
                    ids,
                    [it.position for it in imp.items],
                    [-1 if it.rel_tier is None else it.rel_tier for it in imp.items],
                    ctr[offset : offset + n],
                    clicked,
                    ordered,
                    co,
                ),
            )
            offset += n
            if req.clicked:
                self._remember_clicks(imp.user_id, imp.ts_ms, ids, clicked)

    def absorb_table(self, table: pa.Table) -> list[tuple[str, Finalized]]:
        """Fold records read back from the rewards topic (recovery), in order, vectorised like
        `build`; returns (request_id, Finalized) for each."""
        n = table.num_rows
        if n == 0:
            return []
        items = table.column("items").combine_chunks()
        lengths = np.diff(items.offsets.to_numpy())
        flat = items.flatten()
        ids = flat.field("item_id").to_pylist()
        clicked = flat.field("clicked").to_pylist()
        ordered = flat.field("ordered").to_pylist()
        queries = table.column("query").to_pylist()
        ts = table.column("ts_ms").to_pylist()
        users = table.column("user_id").to_pylist()
        self.ctr.score_then_observe_batch(queries, ids, clicked, lengths.tolist(), ts)
        out = []
        offset = 0
        for rid, user, t, length in zip(
            table.column("request_id").to_pylist(), users, ts, lengths.tolist(), strict=True
        ):
            r_ids = ids[offset : offset + length]
            r_clicked = clicked[offset : offset + length]
            r_ordered = ordered[offset : offset + length]
            offset += length
            c = frozenset(i for i, f in zip(r_ids, r_clicked, strict=True) if f) if any(r_clicked) else _NONE
            o = frozenset(i for i, f in zip(r_ids, r_ordered, strict=True) if f) if any(r_ordered) else _NONE
            if c:
                self._remember_clicks(user, t, r_ids, r_clicked)
            out.append((rid, Finalized(t, c, o)))
        return out

    def _remember_clicks(self, user: str, ts: int, ids: Sequence[str], clicked: Sequence[bool]) -> None:
        """Per user, (ts, item) newest first; an item appears once, at its latest request."""
        if not self.history_len:
            return
        new = [i for i, c in zip(ids, clicked, strict=True) if c]  # impression (position) order
        entries = self._history.pop(user, [])
        fresh = set(new)
        merged = [(ts, i) for i in new] + [e for e in entries if e[1] not in fresh]
        if entries and ts < entries[0][0]:  # finalised out of ts order (idle flush, eviction)
            merged.sort(key=lambda e: -e[0])
        self._history[user] = merged[: self.history_len + 8]
        if len(self._history) > self.max_users:
            self._history.popitem(last=False)


class _Stream:
    __slots__ = ("caught_up", "max_ts")

    def __init__(self) -> None:
        self.max_ts = _NEG_INF
        self.caught_up = False


class JoinState:
    """One shard's open requests (a shard = one partition number of the three input topics)."""

    def __init__(self, cfg: JoinConfig, enricher: Enricher, streams: tuple[str, ...] = ("in",)):
        self.window_ms = int(cfg.window_s * 1000)
        self.lateness_ms = int(cfg.allowed_lateness_s * 1000)
        self.idle_ms = int(cfg.idle_finalize_s * 1000)
        self.orphan_ttl_ms = int(cfg.orphan_ttl_s * 1000)
        self.retention_ms = self.window_ms + self.lateness_ms + self.orphan_ttl_ms
        self.max_open = cfg.max_open_requests
        self.max_seen = 16 * cfg.max_open_requests
        self.enricher = enricher
        self.streams = {s: _Stream() for s in streams}
        self.watermark = _NEG_INF
        self.last_event_ms: int | None = None
        self.open: dict[str, OpenRequest] = {}
        self._deadlines: list[tuple[int, int, str]] = []  # (ts + window, seq, request_id)
        self._orphans: dict[str, list[tuple[int, Action, bytes | str | None, Source]]] = {}
        self._orphan_expiry: list[tuple[int, int, str]] = []  # (ts + ttl, seq, request_id)
        self._seq = 0
        self.finalized: OrderedDict[str, Finalized] = OrderedDict()
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # event_id -> (ts, content hash)
        self._records = RecordColumns()
        self._finished: list[tuple[OpenRequest, int, str]] = []  # finalised, not yet scored
        self.dead: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    # -- inputs -----------------------------------------------------------------------------
    def on_event(
        self,
        ev: Impression | Action,
        raw: bytes | str | None,
        src: Source,
        stream: str,
        now_ms: int,
    ) -> None:
        self.last_event_ms = now_ms
        self.counts["events"] += 1
        seen = self._seen.get(ev.event_id)
        if seen is not None:
            if seen[1] == hash(ev):
                self.counts["duplicates"] += 1
            else:
                self.counts["dead_reused_event_id"] += 1
                self.dead.append(
                    dead_letter(
                        "reused_event_id: an earlier event had this event_id with other content",
                        raw,
                        src,
                        event_id=ev.event_id,
                        request_id=ev.request_id,
                    )
                )
            return
        self._seen[ev.event_id] = (ev.ts_ms, hash(ev))
        if isinstance(ev, Impression):
            self._on_impression(ev, raw, src, now_ms)
        else:
            self._on_action(ev, raw, src)
        st = self.streams[stream]
        st.caught_up = False
        if ev.ts_ms > st.max_ts:
            st.max_ts = ev.ts_ms
            self._advance(now_ms)

    def forget_event(self, event_id: str) -> None:
        """Un-see an event whose processing failed, so a retry is not taken for a redelivery."""
        self._seen.pop(event_id, None)

    def set_caught_up(self, stream: str, caught_up: bool, now_ms: int) -> None:
        """The edge says whether the consumer has read everything the stream holds."""
        st = self.streams[stream]
        if st.caught_up != caught_up:
            st.caught_up = caught_up
            self._advance(now_ms)

    def tick(self, now_ms: int) -> None:
        """Rule 2's idle clause: nothing arrived for idle_finalize → finalise everything."""
        if self.last_event_ms is None or now_ms - self.last_event_ms < self.idle_ms:
            return
        if self.open or self._orphans:
            self.finish(now_ms, reason="idle")

    def finish(self, now_ms: int, reason: str = "end_of_input") -> None:
        """End of input: every open request is finalised and every orphan dead-lettered."""
        for rid in sorted(self.open, key=lambda r: (self.open[r].imp.ts_ms, r)):
            self._finalize(rid, now_ms, reason)
        for rid in list(self._orphans):
            for _, act, raw, src in self._orphans.pop(rid):
                self._dead("orphan", act, raw, src)
        self._deadlines.clear()
        self._orphan_expiry.clear()

    # -- outputs ----------------------------------------------------------------------------
    @property
    def records(self) -> RecordColumns:
        """Finished records; requests finalised since the last look are scored now, in one batch."""
        if self._finished:
            self.enricher.build(self._finished, self._records)
            self._finished = []
        return self._records

    def n_unscored(self) -> int:
        """Requests finalised but not scored yet (cheap: scores nothing)."""
        return len(self._finished)

    def drain(self) -> tuple[RecordColumns, list[dict[str, Any]]]:
        records, dead = self.records, self.dead
        self._records, self.dead = RecordColumns(), []
        return records, dead

    def held_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest offset per input partition that open state still depends on (commit below it)."""
        low: dict[tuple[str, int], int] = {}
        for req in self.open.values():
            for key, off in req.held.items():
                if off < low.get(key, 2**62):
                    low[key] = off
        for pending in self._orphans.values():
            for _, _, _, src in pending:
                key = (src.stream, src.partition)
                if src.offset < low.get(key, 2**62):
                    low[key] = src.offset
        return low

    # -- rules ------------------------------------------------------------------------------
    def _on_impression(self, imp: Impression, raw: bytes | str | None, src: Source, now: int) -> None:
        rid = imp.request_id
        self.counts["impressions"] += 1
        if rid in self.open or rid in self.finalized:
            self.counts["redelivered"] += 1  # rule 4
            return
        if len(self.open) >= self.max_open:  # rule 5
            self._evict_oldest(now)
        req = OpenRequest(imp, frozenset([it.item_id for it in imp.items]))
        req.held[(src.stream, src.partition)] = src.offset
        self.open[rid] = req
        self._seq += 1
        heapq.heappush(self._deadlines, (imp.ts_ms + self.window_ms, self._seq, rid))
        for _, act, a_raw, a_src in self._orphans.pop(rid, ()):  # rule 3: orphans meet their impression
            self._attribute(req, act, a_raw, a_src)

    def _on_action(self, act: Action, raw: bytes | str | None, src: Source) -> None:
        kind = "click" if type(act) is Click else "order"
        self.counts[kind + "s"] += 1
        req = self.open.get(act.request_id)
        if req is not None:
            self._attribute(req, act, raw, src)
            return
        fin = self.finalized.get(act.request_id)
        if fin is not None:  # rule 4
            done = fin.clicked if kind == "click" else fin.ordered
            if act.item_id in done:
                self.counts["redelivered"] += 1
            else:
                self._dead("late", act, raw, src)
            return
        if act.ts_ms + self.window_ms < self.watermark:  # rule 4: any request it could
            self._dead("late", act, raw, src)  # belong to is past its deadline (and forgotten)
            return
        self._seq += 1  # rule 3
        self._orphans.setdefault(act.request_id, []).append((self._seq, act, raw, src))
        heapq.heappush(self._orphan_expiry, (act.ts_ms + self.orphan_ttl_ms, self._seq, act.request_id))

    def _attribute(self, req: OpenRequest, act: Action, raw: bytes | str | None, src: Source) -> None:
        if act.item_id not in req.item_ids:  # rule 1
            self._dead("item_not_impressed", act, raw, src)
            return
        if not 0 <= act.ts_ms - req.imp.ts_ms <= self.window_ms:
            self._dead("outside_window", act, raw, src)
            return
        if type(act) is Click:
            req.clicked.add(act.item_id)
            self.counts["attributed_clicks"] += 1
        else:
            req.ordered.add(act.item_id)
            self.counts["attributed_orders"] += 1
        req.held.setdefault((src.stream, src.partition), src.offset)

    def _advance(self, now_ms: int) -> None:
        """Recompute the watermark (rule 2) and finalise / expire what it passes."""
        catching_up = [s.max_ts for s in self.streams.values() if not s.caught_up]
        mark = min(catching_up) if catching_up else max(s.max_ts for s in self.streams.values())
        if mark == _NEG_INF:
            return
        wm = mark - self.lateness_ms
        if wm <= self.watermark:
            return
        self.watermark = wm
        while self._deadlines and self._deadlines[0][0] < wm:
            _, _, rid = heapq.heappop(self._deadlines)
            if rid in self.open:
                self._finalize(rid, now_ms, "watermark")
        while self._orphan_expiry and self._orphan_expiry[0][0] < wm:
            _, seq, rid = heapq.heappop(self._orphan_expiry)
            self._expire_orphan(rid, seq)
        self._forget(wm - self.retention_ms)

    def _expire_orphan(self, rid: str, seq: int) -> None:
        pending = self._orphans.get(rid)
        if not pending:
            return
        for i, (s, act, raw, src) in enumerate(pending):
            if s == seq:
                del pending[i]
                self._dead("orphan", act, raw, src)
                break
        if not pending:
            del self._orphans[rid]

    def _forget(self, horizon_ms: int) -> None:
        """Drop seen event ids and finalised requests older than any event that can still matter."""
        seen, fin = self._seen, self.finalized
        while len(seen) > self.max_seen:
            seen.popitem(last=False)
        while seen:
            _, (ts, _) = next(iter(seen.items()))
            if ts >= horizon_ms:
                break
            seen.popitem(last=False)
        while fin:
            _, info = next(iter(fin.items()))
            if info.ts_ms >= horizon_ms:
                break
            fin.popitem(last=False)

    def _evict_oldest(self, now_ms: int) -> None:
        while self._deadlines:
            _, _, rid = heapq.heappop(self._deadlines)
            if rid in self.open:
                self._finalize(rid, now_ms, "evicted")
                self.counts["evicted"] += 1
                return

    def _finalize(self, rid: str, now_ms: int, reason: str) -> None:
        req = self.open.pop(rid)
        self._finished.append((req, now_ms, reason))
        self.finalized[rid] = Finalized(req.imp.ts_ms, frozenset(req.clicked), frozenset(req.ordered))
        self.counts["records"] += 1
        self.counts[f"finalized_{reason}"] += 1

    def _dead(self, reason: str, act: Action, raw: bytes | str | None, src: Source) -> None:
        self.dead.append(dead_letter(reason, raw, src, event_id=act.event_id, request_id=act.request_id))
        self.counts[f"dead_{reason}"] += 1
