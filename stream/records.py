"""The reward record: the join's output type (one per finalised request), its Arrow schema, and its
wire forms (a JSON array of records per Kafka message; Parquet files in the archive and in replay).

Schema (schema_version 1), see docs/architecture.md "Reward record":

    request_id str, user_id str, query str, ts_ms int64 (impression time), finalized_ms int64,
    keywords list<str>, history list<str> (newest first), schema_version int32,
    finalize_reason str (watermark | idle | evicted | end_of_input | shutdown),
    items list<struct<item_id str, position int32, rel_tier int8 (-1 unknown), ctr float64,
                      clicked bool, ordered bool, co_score float64>>

Records are plain dicts on the hot path (orjson writes them without a conversion step); `RecordColumns`
builds the Arrow table column by column, which is several times cheaper than `Table.from_pylist`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
CONTENT_TYPE = b"application/vnd.streamrl.records+json; v=1"

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
_SCALARS = ("request_id", "user_id", "query", "ts_ms", "finalized_ms", "schema_version")
_ITEM_FIELDS = ("item_id", "position", "rel_tier", "ctr", "clicked", "ordered", "co_score")

Record = dict[str, Any]


class RecordColumns:
    """Accumulates records column-wise; `table()` builds the Arrow table in a few C calls."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._cols: dict[str, list[Any]] = {name: [] for name in RECORD_SCHEMA.names}
        self._items: dict[str, list[Any]] = {name: [] for name in _ITEM_FIELDS}
        self._item_offsets = [0]
        self._kw_offsets = [0]
        self._hist_offsets = [0]
        self._kw: list[str] = []
        self._hist: list[str] = []

    def __len__(self) -> int:
        return len(self._cols["request_id"])

    def append(self, rec: Record) -> None:
        cols = self._cols
        for name in _SCALARS:
            cols[name].append(rec[name])
        cols["finalize_reason"].append(rec.get("finalize_reason", ""))
        self._kw.extend(rec["keywords"])
        self._kw_offsets.append(len(self._kw))
        self._hist.extend(rec["history"])
        self._hist_offsets.append(len(self._hist))
        items = self._items
        for it in rec["items"]:
            for name in _ITEM_FIELDS:
                items[name].append(it[name])
        self._item_offsets.append(len(items["item_id"]))

    def table(self) -> pa.Table:
        arrays: list[pa.Array] = []
        for field in RECORD_SCHEMA:
            name = field.name
            if name == "keywords":
                arrays.append(_list(self._kw_offsets, pa.array(self._kw, pa.string())))
            elif name == "history":
                arrays.append(_list(self._hist_offsets, pa.array(self._hist, pa.string())))
            elif name == "items":
                children = [pa.array(self._items[f.name], f.type) for f in ITEM_TYPE]
                struct = pa.StructArray.from_arrays(children, fields=list(ITEM_TYPE))
                arrays.append(_list(self._item_offsets, struct))
            else:
                arrays.append(pa.array(self._cols[name], field.type))
        return pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA)


def _list(offsets: list[int], values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def records_table(records: Iterable[Record]) -> pa.Table:
    cols = RecordColumns()
    for rec in records:
        cols.append(rec)
    return cols.table()


def encode_batch(records: list[Record]) -> bytes:
    """One Kafka message value: a JSON array of records."""
    return orjson.dumps(records)


def decode_batch(value: bytes) -> list[Record]:
    records = orjson.loads(value)
    if not isinstance(records, list):
        raise ValueError("a rewards message must hold a JSON array of records")
    return records


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """temp file → fsync → rename → fsync(dir): a reader sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        import os

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
    from stream.dedup import FirstSeen

    seen = FirstSeen()
    for path in paths:
        for rec in pq.read_table(path).to_pylist():
            if seen.first(rec["request_id"]):
                yield rec
