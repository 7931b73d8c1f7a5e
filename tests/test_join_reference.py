"""The join against an independent naive reference (tests/reference_join.py) on generated streams
with disorder within the lateness bound, duplicates, orphans, late and malformed events."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_join import reference_join

from streamrl.configs import JoinConfig
from streamrl.stream.replay import replay
from streamrl.stream.synthetic import SynthSpec, generate


def _compare(lines: list[bytes], tmp: Path, cfg: JoinConfig) -> None:
    path = tmp / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    result = replay([path], tmp / "out", cfg)
    got = {}
    for f in result.record_files:
        for rec in pq.read_table(f).to_pylist():
            assert rec["request_id"] not in got, "a request was emitted twice"
            got[rec["request_id"]] = rec
    want, want_dead = reference_join(
        lines, int(cfg.window_s * 1000), int(cfg.allowed_lateness_s * 1000), int(cfg.orphan_ttl_s * 1000)
    )
    assert set(got) == set(want)
    for rid, ref in want.items():
        rec = got[rid]
        assert [(i["item_id"], i["position"], i["rel_tier"]) for i in rec["items"]] == ref["items"]
        assert {i["item_id"] for i in rec["items"] if i["clicked"]} == ref["clicked"], rid
        assert {i["item_id"] for i in rec["items"] if i["ordered"]} == ref["ordered"], rid
    dead = [d.split(":")[0] for d in _dlq_reasons(result.dlq_path)]
    assert sorted(dead) == sorted(want_dead)


def _dlq_reasons(path: Path) -> list[str]:
    import orjson

    return [orjson.loads(line)["reason"] for line in path.read_bytes().splitlines()]


def test_matches_reference_with_every_fault(tmp_path: Path) -> None:
    spec = SynthSpec(
        requests=1500,
        seed=7,
        rate_per_s=1,
        dup_rate=0.03,
        orphan_rate=0.03,
        late_rate=0.03,
        not_impressed_rate=0.03,
        malformed_rate=0.03,
        disorder_ms=25_000,
    )
    lines = [raw for _, raw in generate(spec)]
    _compare(lines, tmp_path, JoinConfig())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), disorder=st.integers(0, 30_000), window=st.sampled_from([60, 600]))
def test_matches_reference_property(
    tmp_path_factory: pytest.TempPathFactory, seed: int, disorder: int, window: int
) -> None:
    spec = SynthSpec(
        requests=120,
        seed=seed,
        rate_per_s=0.3,
        dup_rate=0.05,
        orphan_rate=0.05,
        late_rate=0.05,
        not_impressed_rate=0.05,
        malformed_rate=0.05,
        disorder_ms=disorder,
        window_ms=window * 1000,
        click_delay_ms=min(120_000, window * 500),
        order_delay_ms=window * 400,
    )
    lines = [raw for _, raw in generate(spec)]
    _compare(lines, tmp_path_factory.mktemp("p"), JoinConfig(window_s=window))
