"""The streaming learner's sampling buffer: recent usable records, each sampled at most
`learn.max_reuse` times.

Bounded three ways: `learn.buffer_size` records (the oldest leave first), `learn.buffer_max_age_s` of
event time behind the newest record, and the reuse cap — a record sampled `max_reuse` times leaves.
So on a quiet stream the learner runs out of fresh prompts and idles (counted) instead of stepping on
the same few records without bound. The buffer is saved with each checkpoint (BUFFER, with each
record's use count) and reloaded on resume, so the first steps after a restart see the data the last
ones saw.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from streamrl.checkpoints.store import BUFFER
from streamrl.stream.records import RECORD_SCHEMA

Record = dict[str, Any]
__all__ = ["BUFFER", "SampleBuffer"]


class SampleBuffer:
    def __init__(self, size: int, max_age_s: float, max_reuse: int | None) -> None:
        self.entries: deque[list[Any]] = deque(maxlen=size)  # [record, uses]
        self.max_age_ms = max_age_s * 1000
        self.max_reuse = max_reuse
        self.drawn = 0  # samples taken (a record sampled twice counts twice)
        self.fresh = 0  # of them, first uses of a record

    def __len__(self) -> int:
        return len(self.entries)

    def extend(self, records: Iterable[Record]) -> None:
        self.entries.extend([r, 0] for r in records)

    def expire(self, newest_ms: int) -> None:
        while self.entries and self.entries[0][0]["ts_ms"] < newest_ms - self.max_age_ms:
            self.entries.popleft()

    def ready(self, n: int) -> bool:
        return len(self.entries) >= n

    def sample(self, rng: random.Random, n: int) -> list[Record]:
        """n distinct records, uniformly; each one's use count goes up, and a record that reached
        max_reuse leaves the buffer."""
        picked = rng.sample(range(len(self.entries)), n)
        out = []
        for i in picked:
            entry = self.entries[i]
            self.fresh += entry[1] == 0
            entry[1] += 1
            out.append(entry[0])
        self.drawn += n
        if self.max_reuse is not None:
            for i in sorted(picked, reverse=True):
                if self.entries[i][1] >= self.max_reuse:
                    del self.entries[i]
        return out

    @property
    def reuse_factor(self) -> float:
        """Samples per distinct record trained on, since this process started (1 = each once)."""
        return self.drawn / self.fresh if self.fresh else 0.0

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        records = [r for r, _ in self.entries]
        table = pa.Table.from_pylist(records, schema=RECORD_SCHEMA)
        table = table.append_column("uses", pa.array([u for _, u in self.entries], pa.int32()))
        pq.write_table(table, path)

    def load(self, path: Path) -> int:
        """Entries saved by `save`, oldest first; returns how many."""
        table = pq.read_table(path)
        uses = table.column("uses").to_pylist()
        records = table.drop_columns(["uses"]).to_pylist()
        self.entries.extend([r, u] for r, u in zip(records, uses, strict=True))
        return len(records)
