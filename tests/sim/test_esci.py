"""The ESCI world: real queries and judgments (Reddy et al. 2022, Apache-2.0) drive relevance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import shared_data

ROOT = Path(__file__).resolve().parents[2]
TIER = {"100.000": 3, "10.000": 2, "1.000": 1, "0.000": 0}


def test_esci_world_tiers_equal_the_judgments(tmp_path: Path) -> None:
    judgments = json.loads(shared_data("esci/esci_us_judgments.json").read_text())["judgmentRatings"]
    want = {(j["query"], r["docId"]): TIER[r["rating"]] for j in judgments for r in j["ratings"]}
    out, truth = tmp_path / "esci.jsonl", tmp_path / "truth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrl",
            "simulate",
            "--world",
            str(ROOT / "configs/world-esci.yaml"),
            "--out",
            str(out),
            "--requests",
            "1500",
            "--truth",
            str(truth),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "STREAMRL_SHARED": str(shared_data("").parent)},
    )
    # every impressed item's tier is the human judgment of that (query, item)
    shown = 0
    for line in out.read_bytes().splitlines():
        ev = orjson.loads(line)
        if ev["type"] != "impression":
            continue
        for it in ev["items"]:
            assert it["rel_tier"] == want.get((ev["query"], it["item_id"]), 0)
            shown += (ev["query"], it["item_id"]) in want
    assert shown > 1000
    # the truth table lists exactly the judged pairs with tier > 0 (for the queries in play)
    table = {
        (r["query"], r["item_id"]): r["tier"] for r in pq.read_table(truth / "relevance.parquet").to_pylist()
    }
    in_play = {q for q, _ in table}
    assert table == {k: v for k, v in want.items() if v > 0 and k[0] in in_play}
    catalog = [orjson.loads(x) for x in (truth / "catalog.jsonl").read_bytes().splitlines()]
    assert {c["item_id"] for c in catalog} == {a for _, a in want}
    exact_titles = {c["title"] for c in catalog if not c["title"].startswith("related to ")}
    assert exact_titles <= {q for q, _ in want}


def test_without_shared_the_shipped_sample_builds_the_esci_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean clone (or an install) with no ../shared: the ESCI world runs on the 40-query sample in
    sim/data/esci, shipped with its attribution (sim/data/README.md)."""
    from streamrl.sim.esci import SAMPLE, esci_dir, load_judgments
    from streamrl.sim.world import build_world, load_world_config

    monkeypatch.setenv("STREAMRL_SHARED", "/nonexistent")
    cfg = load_world_config(ROOT / "configs/world-esci.yaml")
    assert esci_dir(cfg) == SAMPLE
    judged = load_judgments(SAMPLE)
    assert len(judged) == 40 and {t for tiers in judged.values() for t in tiers.values()} == {0, 1, 2, 3}
    world = build_world(cfg)
    assert {q.text for q in world.queries} == set(judged)
    assert {i.item_id for i in world.items} == {a for tiers in judged.values() for a in tiers}
    notice = (SAMPLE.parent / "README.md").read_text()
    assert "Reddy et al." in notice and "Apache-2.0" in notice and "CC BY 4.0" in notice
