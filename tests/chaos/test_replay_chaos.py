"""Issue #14's event rows through `streamrl replay` (the same join and bounds as the live joiner, on the
log's own clock): every hostile event is dead-lettered with its reason, the records are exactly those
of the clean log, a real jump of the log's clock is not mistaken for a bad timestamp, and a replay that
fails leaves the earlier output as it was."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streamrl.configs import load_config
from streamrl.stream.replay import ReplayInputError, replay
from streamrl.stream.synthetic import SynthSpec, generate

from .hostile import SPEC, clean, hostile, mixed


def _run(lines: list[bytes], out: Path) -> tuple[object, list[dict]]:
    src = out.with_suffix(".jsonl")
    src.write_bytes(b"".join(x + b"\n" for x in lines))
    result = replay([src], out, load_config().join)
    table = pq.read_table(result.record_files[0])
    dead = [orjson.loads(x) for x in result.dlq_path.read_bytes().splitlines()]
    return table, dead


def test_every_hostile_event_is_dead_lettered_and_the_records_are_the_clean_ones(tmp_path: Path) -> None:
    lines = clean()
    bad = hostile(lines)
    want, _ = _run(lines, tmp_path / "clean")
    got, dead = _run(mixed(lines, bad), tmp_path / "hostile")
    assert got.equals(want)  # not one record changed, none lost, none added
    for reason, events in bad.items():
        assert sum(reason in d["reason"] for d in dead) == len(events), reason
    assert all(d["raw"] and d["source"]["line"] for d in dead)


def test_a_real_jump_of_the_log_clock_is_joined(tmp_path: Path) -> None:
    """Three hours of silence in the log, then traffic again: confirmed by the events after it."""
    later = SynthSpec(**{**SPEC.__dict__, "seed": 6, "start_ms": SPEC.start_ms + 3 * 3600 * 1000})
    first, second = clean(), [raw for _, raw in generate(later)]
    got, dead = _run(first + second, tmp_path / "gap")
    alone, _ = _run(second, tmp_path / "second")
    ids = set(got.column("request_id").to_pylist())
    assert set(alone.column("request_id").to_pylist()) <= ids
    assert not any(d["reason"].startswith("future") for d in dead)


def test_a_failed_replay_leaves_the_earlier_output(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(x + b"\n" for x in clean()))
    out = tmp_path / "out"
    first = replay([good], out, load_config().join)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(good.read_bytes())[:5000])  # a torn gzip: fails mid-way
    with pytest.raises(ReplayInputError):
        replay([good, broken], out, load_config().join)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert first.record_files and all(f.exists() for f in first.record_files)
