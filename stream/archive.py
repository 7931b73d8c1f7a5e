"""The rolling Parquet archive of the rewards topic, exactly once per message.

A part file holds the records of one rewards partition between two offsets and is named after them:
`rewards-p<partition>-<first offset>-<last offset>.parquet`, written temp → fsync → rename. On start
the archiver resumes each partition after the highest offset already in a file (the files, not the
group offsets, are the truth), so a crash between a rename and a commit never writes a message twice.
Records are kept as the joiner wrote them; a duplicate record that a joiner crash put on the topic
is dropped by every reader (`stream.records.read_records`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamrl.configs.schema import ArchiveConfig, KafkaConfig
from streamrl.stream import kafka_io
from streamrl.stream.records import decode_or_skip, write_parquet_atomic

_PART = re.compile(r"rewards-p(\d+)-(\d+)-(\d+)\.parquet$")


def archived_upto(root: Path) -> dict[int, int]:
    """Next offset to archive per partition, from the part files present."""
    nxt: dict[int, int] = {}
    for path in root.glob("rewards-p*.parquet"):
        m = _PART.search(path.name)
        if m:
            part, last = int(m.group(1)), int(m.group(3))
            nxt[part] = max(nxt.get(part, 0), last + 1)
    return nxt


def part_files(root: Path) -> list[Path]:
    """Part files in (partition, offset) order: the order readers must apply first-copy-wins in."""
    found = []
    for path in root.glob("rewards-p*.parquet"):
        m = _PART.search(path.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), path))
    return [p for _, _, p in sorted(found)]


class _Part:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.first = -1
        self.last = -1
        self.opened = time.monotonic()


class Archiver:
    def __init__(self, kcfg: KafkaConfig, acfg: ArchiveConfig) -> None:
        self.kcfg = kcfg
        self.acfg = acfg
        self.root = Path(acfg.dir)
        self.parts: dict[int, _Part] = {}
        self.files_written = 0
        self.records = 0

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        topic = self.kcfg.topics.rewards
        self.consumer = kafka_io.make_consumer(self.kcfg, None)
        parts = sorted(self.consumer.partitions_for_topic(topic) or ())
        tps = [kafka_io.TopicPartition(topic, p) for p in parts]
        self.consumer.assign(tps)
        done = archived_upto(self.root)
        begin = self.consumer.beginning_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, max(done.get(tp.partition, 0), begin[tp]))

    def step(self, timeout_ms: int = 0) -> int:
        """Poll once, roll what is due; returns the number of records taken."""
        taken = 0
        for tp, msgs in self.consumer.poll(timeout_ms=timeout_ms, max_records=2000).items():
            part = self.parts.setdefault(tp.partition, _Part())
            for m in msgs:
                table = decode_or_skip(m.value, "archive", (m.partition, m.offset))
                if table is None:
                    continue
                part.tables.append(table)
                part.rows += table.num_rows
                if part.first < 0:
                    part.first = m.offset
                part.last = m.offset
                taken += table.num_rows
        self.roll(force=False)
        self.records += taken
        return taken

    def roll(self, force: bool) -> None:
        now = time.monotonic()
        for p, part in list(self.parts.items()):
            if part.first < 0:
                continue
            due = part.rows >= self.acfg.roll_records or now - part.opened >= self.acfg.roll_s
            if force or due:
                name = f"rewards-p{p:03d}-{part.first:012d}-{part.last:012d}.parquet"
                write_parquet_atomic(pa.concat_tables(part.tables), self.root / name)
                self.files_written += 1
                self.parts[p] = _Part()

    def close(self) -> None:
        try:
            self.roll(force=True)
        finally:
            self.consumer.close(autocommit=False)

    def stats(self) -> dict[str, Any]:
        return {"archive_files": self.files_written, "archive_records": self.records}
