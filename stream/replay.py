"""`streamrl replay`: the same join over event JSON-lines files (backfills, tests, audits).

Files are read in the order given, lines in file order, and that order is the arrival order. The
clock is event time (the highest ts seen), so a replay is deterministic: the same files give the
same records, byte for byte. Output: `DIR/records-NNNNN.parquet` (the reward record schema) and
`DIR/dlq.jsonl` (one dead letter per line, with `file` and `line`). The output is written into a
temp folder and swapped in at the end: earlier output of these names in DIR is replaced only by a
replay that finished; a failed one leaves it as it was.

Event time is bounded like the live joiner's (join.max_event_skew_s), against the log's own clock:
an event more than the skew ahead of the highest event time so far is held as a suspect. A jump is
real when the log confirms it — CONFIRM suspects from at least two requests — and the suspects are
then joined in order; a lone outlier (DISMISS ordinary events pass first, or the input ends) is
dead-lettered `future` and never moves the watermark.
"""

from __future__ import annotations

import gc
import gzip
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from streamrl.configs.schema import JoinConfig
from streamrl.stream.events import Event, ItemEvent, Malformed, decode_event, limits_of
from streamrl.stream.join import Enricher, JoinState, Source, dead_letter
from streamrl.stream.records import write_parquet_atomic

CONFIRM = 3  # suspects (from >= 2 requests) that make a jump of the log's clock real
DISMISS = 50  # ordinary events after which unconfirmed suspects are outliers


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
    tmp = out_dir / f".replay-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _join_into(paths, tmp, cfg, roll_records)
        for old in [*out_dir.glob("records-*.parquet"), out_dir / "dlq.jsonl"]:
            old.unlink(missing_ok=True)
        files = []
        for f in result.record_files:
            os.replace(f, out_dir / f.name)
            files.append(out_dir / f.name)
        os.replace(result.dlq_path, out_dir / "dlq.jsonl")
        return ReplayResult(result.counts, files, out_dir / "dlq.jsonl")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _join_into(paths: Sequence[Path], out_dir: Path, cfg: JoinConfig, roll_records: int) -> ReplayResult:
    state = JoinState(cfg, Enricher(cfg))
    limits = limits_of(cfg)
    skew = int(cfg.max_event_skew_s * 1000)
    files: list[Path] = []
    clock = 0
    suspects: list[tuple[Event, bytes, Source]] = []
    ordinary = 0  # events since the first suspect that were within the clock
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

        def join(ev: Event, line: bytes, src: Source) -> None:
            nonlocal clock
            clock = max(clock, ev.ts_ms)
            state.on_event(ev, line, src, "in", clock)  # type: ignore[arg-type]

        def dismiss() -> None:
            for ev, line, src in suspects:
                state.counts["dead_future"] += 1
                ahead = (ev.ts_ms - clock) / 1000
                reason = (
                    f"future: ts_ms {ahead:.0f} s ahead of the log's clock, not confirmed by later events"
                )
                state.dead.append(dead_letter(reason, line, src, event_id=getattr(ev, "event_id", None)))
            suspects.clear()

        for path in paths:
            name = str(path)
            for lineno, raw in _lines(path):
                src = Source(name, -1, lineno)
                line = raw.rstrip(b"\r\n")
                if not raw.strip():  # not an event: set aside like any bad line
                    state.counts["dead_malformed"] += 1
                    state.dead.append(dead_letter("malformed: empty line", line, src))
                    continue
                try:
                    ev = decode_event(line, limits)
                except Malformed as exc:
                    state.counts["dead_malformed"] += 1
                    state.dead.append(dead_letter(exc.reason, line, src))
                    continue
                if isinstance(ev, ItemEvent):
                    state.counts["items"] += 1  # catalog events feed the SID stage, not the join
                    continue
                if clock and ev.ts_ms > clock + skew:
                    suspects.append((ev, line, src))
                    requests = {getattr(s[0], "request_id", None) for s in suspects}
                    if len(suspects) >= CONFIRM and len(requests) >= 2:  # the log's clock did jump
                        for s_ev, s_line, s_src in suspects:
                            join(s_ev, s_line, s_src)
                        suspects.clear()
                        ordinary = 0
                    continue
                join(ev, line, src)
                if suspects:
                    ordinary += 1
                    if ordinary >= DISMISS:
                        dismiss()
                        ordinary = 0
                if state.n_unscored() >= 4096 or len(state.dead) >= 1024:
                    flush()
        dismiss()  # the input ended before confirming them
        state.finish(clock)
        flush(final=True)
    return ReplayResult(state.counts, files, dlq_path)
