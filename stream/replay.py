"""`streamrl replay`: the same join over event JSON-lines files (backfills, tests, audits).

Files are read in the order given, lines in file order, and that order is the arrival order. The
clock is event time (the highest ts seen), so a replay is deterministic: the same files give the
same records, byte for byte. Output: `DIR/records-NNNNN.parquet` (the reward record schema) and
`DIR/dlq.jsonl` (one dead letter per line, with `file` and `line`). Earlier output of these names in
DIR is replaced.
"""

from __future__ import annotations

import gc
import gzip
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from configs.schema import JoinConfig
from stream.events import ItemEvent, Malformed, decode_event
from stream.join import Enricher, JoinState, Source, dead_letter
from stream.records import write_parquet_atomic


class ReplayInputError(OSError):
    """An input file that cannot be opened or read at all."""


@dataclass
class ReplayResult:
    counts: Counter[str]
    record_files: list[Path]
    dlq_path: Path


def _open(path: Path) -> IO[bytes]:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise ReplayInputError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with _open(path) as fh:
        try:
            yield from enumerate(fh, start=1)
        except (OSError, EOFError) as exc:
            raise ReplayInputError(f"{path}: read failed: {exc}") from exc


def replay(
    paths: Sequence[Path], out_dir: Path, cfg: JoinConfig, roll_records: int = 200_000
) -> ReplayResult:
    """Join the files into `out_dir` (see the module docstring)."""
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 1000)  # join state is long-lived and acyclic: collect rarely
    try:
        return _replay(paths, out_dir, cfg, roll_records)
    finally:
        gc.set_threshold(*old)


def _replay(paths: Sequence[Path], out_dir: Path, cfg: JoinConfig, roll_records: int) -> ReplayResult:
    for path in paths:  # fail before writing anything if an input is missing
        if not path.is_file():
            raise ReplayInputError(f"{path}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("records-*.parquet"):
        old.unlink()
    state = JoinState(cfg, Enricher(cfg))
    files: list[Path] = []
    clock = 0
    dlq_path = out_dir / "dlq.jsonl"
    with open(dlq_path, "wb") as dlq:

        def flush(final: bool = False) -> None:
            for d in state.dead:
                dlq.write(orjson.dumps(d) + b"\n")
            state.dead.clear()
            cols = state.records
            if len(cols) >= roll_records or (final and (len(cols) or not files)):
                path = out_dir / f"records-{len(files):05d}.parquet"
                write_parquet_atomic(cols.table(), path)
                files.append(path)
                cols.clear()

        for path in paths:
            name = str(path)
            for lineno, line in _lines(path):
                src = Source(name, -1, lineno)
                if not line.strip():  # not an event: set aside like any bad line
                    state.counts["dead_malformed"] += 1
                    state.dead.append(dead_letter("malformed: empty line", line.rstrip(b"\r\n"), src))
                    continue
                try:
                    ev = decode_event(line)
                except Malformed as exc:
                    state.counts["dead_malformed"] += 1
                    state.dead.append(dead_letter(exc.reason, line.rstrip(b"\r\n"), src))
                    continue
                if isinstance(ev, ItemEvent):
                    state.counts["items"] += 1  # catalog events feed the SID stage, not the join
                    continue
                clock = max(clock, ev.ts_ms)
                state.on_event(ev, line.rstrip(b"\r\n"), src, "in", clock)
                if state.n_unscored() >= 4096 or len(state.dead) >= 1024:
                    flush()
        state.finish(clock)
        flush(final=True)
    return ReplayResult(state.counts, files, dlq_path)
