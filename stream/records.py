"""The reward record: the join's output type (one per finalised request), its Arrow schema, and its
wire forms (Arrow IPC batches on the rewards topic; Parquet in the archive and in replay output).

Schema (schema_version 1), see docs/architecture.md "Reward record":

    request_id str, user_id str, query str, ts_ms int64 (impression time), finalized_ms int64,
    keywords list<str>, history list<str> (newest first), schema_version int32,
    finalize_reason str (watermark | idle | evicted | end_of_input),
    items list<struct<item_id str, position int32, rel_tier int8 (-1 unknown), ctr float64,
                      clicked bool, ordered bool, co_score float64>>

Records are built column by column (`RecordColumns`), never as a dict per item: the join runs once
per request on the hot path, and Arrow takes the columns in a few C calls. One Kafka message holds
one Arrow IPC stream of up to `joiner.max_batch_records` records (kafka-python produces only ~20k
messages/s, ../shared/BROKER.md), and the learner and the archiver read it back without a parse step.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
CONTENT_TYPE = b"application/vnd.apache.arrow.stream; schema=streamrl.reward.v1"

ITEM_TYPE = pa.struct(
    [
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("rel_tier", pa.int8()),
        ("ctr", pa.float64()),
        ("clicked", pa.bool_()),
        ("ordered", pa.bool_()),
        ("co_score", pa.float64()),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("query", pa.string()),
        ("ts_ms", pa.int64()),
        ("finalized_ms", pa.int64()),
        ("keywords", pa.list_(pa.string())),
        ("history", pa.list_(pa.string())),
        ("schema_version", pa.int32()),
        ("finalize_reason", pa.string()),
        ("items", pa.list_(ITEM_TYPE)),
    ]
)
_ITEM_FIELDS = tuple(f.name for f in ITEM_TYPE)

Record = dict[str, Any]  # the to_pylist() form, for readers and tests


class RecordColumns:
    """Reward records accumulated column-wise; `table()` builds the Arrow table."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.request_id: list[str] = []
        self.user_id: list[str] = []
        self.query: list[str] = []
        self.ts_ms: list[int] = []
        self.finalized_ms: list[int] = []
        self.reason: list[str] = []
        self._kw: list[str] = []
        self._kw_off = [0]
        self._hist: list[str] = []
        self._hist_off = [0]
        self._items: tuple[list[Any], ...] = tuple([] for _ in _ITEM_FIELDS)
        self._item_off = [0]

    def __len__(self) -> int:
        return len(self.request_id)

    def add(
        self,
        request_id: str,
        user_id: str,
        query: str,
        ts_ms: int,
        finalized_ms: int,
        keywords: Sequence[str],
        history: Sequence[str],
        reason: str,
        items: tuple[Sequence[Any], ...],  # columns in ITEM_TYPE order, equal lengths
    ) -> None:
        self.request_id.append(request_id)
        self.user_id.append(user_id)
        self.query.append(query)
        self.ts_ms.append(ts_ms)
        self.finalized_ms.append(finalized_ms)
        self.reason.append(reason)
        self._kw.extend(keywords)
        self._kw_off.append(len(self._kw))
        self._hist.extend(history)
        self._hist_off.append(len(self._hist))
        for col, values in zip(self._items, items, strict=True):
            col.extend(values)
        self._item_off.append(len(self._items[0]))

    def add_record(self, rec: Record) -> None:
        """Append a record in its dict form (readers, tests)."""
        items = rec["items"]
        self.add(
            rec["request_id"],
            rec["user_id"],
            rec["query"],
            rec["ts_ms"],
            rec["finalized_ms"],
            rec["keywords"],
            rec["history"],
            rec.get("finalize_reason", ""),
            tuple([it[name] for it in items] for name in _ITEM_FIELDS),
        )

    def table(self) -> pa.Table:
        n = len(self)
        children = [pa.array(col, f.type) for col, f in zip(self._items, ITEM_TYPE, strict=True)]
        arrays = [
            pa.array(self.request_id, pa.string()),
            pa.array(self.user_id, pa.string()),
            pa.array(self.query, pa.string()),
            pa.array(self.ts_ms, pa.int64()),
            pa.array(self.finalized_ms, pa.int64()),
            _list(self._kw_off, pa.array(self._kw, pa.string())),
            _list(self._hist_off, pa.array(self._hist, pa.string())),
            pa.array([SCHEMA_VERSION] * n, pa.int32()),
            pa.array(self.reason, pa.string()),
            _list(self._item_off, pa.StructArray.from_arrays(children, fields=list(ITEM_TYPE))),
        ]
        return pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA)

    def to_pylist(self) -> list[Record]:
        return self.table().to_pylist()


def _list(offsets: list[int], values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def records_table(records: Iterable[Record]) -> pa.Table:
    cols = RecordColumns()
    for rec in records:
        cols.add_record(rec)
    return cols.table()


def encode_batch(table: pa.Table) -> bytes:
    """One Kafka message value: an Arrow IPC stream holding the table's records."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


log = logging.getLogger("streamrl.records")


class BadBatch(ValueError):
    """A rewards-topic message that is not a batch of streamrl v1 records."""


# Garbage skipped on the rewards topic in this process, by reader ("joiner recovery", "learner", ...).
SKIPPED_BATCHES: Counter[str] = Counter()


def decode_batch(value: bytes | None) -> pa.Table:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(value or b"")).read_all()
    except (pa.ArrowException, OSError, TypeError, ValueError) as exc:
        raise BadBatch(f"not an Arrow IPC stream ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not table.schema.equals(RECORD_SCHEMA):
        raise BadBatch(f"rewards message has schema {table.schema}, expected streamrl v1")
    return table


def decode_or_skip(value: bytes | None, reader: str, where: object = "") -> pa.Table | None:
    """`decode_batch`, or None for garbage: counted in SKIPPED_BATCHES[reader] and logged, so one bad
    message on the rewards topic never stops a reader."""
    try:
        return decode_batch(value)
    except BadBatch as exc:
        SKIPPED_BATCHES[reader] += 1
        log.warning("%s: skipped a rewards message %s: %s", reader, where, exc)
        return None


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """temp file → fsync → rename → fsync(dir): a reader sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_records(paths: Iterable[Path]) -> Iterator[Record]:
    """Records from Parquet files in the order given, duplicates (same request_id) dropped, first
    kept — the same rule as the Kafka reader (stream/dedup.py)."""
    from streamrl.stream.dedup import FirstSeen

    seen = FirstSeen()
    for path in paths:
        for rec in pq.read_table(path).to_pylist():
            if seen.first(rec["request_id"]):
                yield rec
