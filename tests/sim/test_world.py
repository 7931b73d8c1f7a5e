"""The simulated world: determinism, the relevance rules, and the behaviour the click model promises."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streamrl.sim.world import Item, Query, relevance_tier

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "configs" / "world.yaml"


def simulate(tmp: Path, name: str, *args: str) -> Path:
    out = tmp / f"{name}.jsonl"
    subprocess.run(
        [sys.executable, "-m", "streamrl", "simulate", "--world", str(WORLD), "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path) -> None:
    a = simulate(tmp_path, "a", "--requests", "400", "--seed", "3")
    b = simulate(tmp_path, "b", "--requests", "400", "--seed", "3")
    c = simulate(tmp_path, "c", "--requests", "400", "--seed", "4")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    items_a = [x for x in a.read_bytes().splitlines() if b'"type":"item"' in x]
    items_c = [x for x in c.read_bytes().splitlines() if b'"type":"item"' in x]
    assert items_a != items_c  # a different catalog, not only different traffic


def test_items_first_then_requests_in_contract(tmp_path: Path) -> None:
    from streamrl.stream.events import ItemEvent, decode_event

    lines = simulate(tmp_path, "e", "--requests", "200").read_bytes().splitlines()
    kinds = [type(decode_event(x)).__name__ for x in lines]  # every line decodes: the contract
    first_other = next(i for i, k in enumerate(kinds) if k != "ItemEvent")
    assert all(k == "ItemEvent" for k in kinds[:first_other])
    assert "ItemEvent" not in kinds[first_other:]
    assert {"Impression", "Click", "Order"} <= set(kinds)
    assert isinstance(decode_event(lines[0]), ItemEvent)


@pytest.mark.parametrize(
    ("query", "item", "tier"),
    [
        # exact: right leaf, every named attribute
        (
            Query("red wool tops", ("a", "b", "c"), {"colour": "red", "material": "wool"}, None, 1),
            Item("i", "", ("a", "b", "c"), {"colour": "red", "material": "wool"}, "m", 1),
            3,
        ),
        # one attribute wrong: related
        (
            Query("red wool tops", ("a", "b", "c"), {"colour": "red", "material": "wool"}, None, 1),
            Item("i", "", ("a", "b", "c"), {"colour": "blue", "material": "wool"}, "m", 1),
            2,
        ),
        # two wrong: mismatch
        (
            Query("red wool tops", ("a", "b", "c"), {"colour": "red", "material": "wool"}, None, 1),
            Item("i", "", ("a", "b", "c"), {"colour": "blue", "material": "silk"}, "m", 1),
            1,
        ),
        # the negated attribute: mismatch ("knitwear, no turtleneck")
        (
            Query("knitwear, no turtleneck", ("a", "b", "c"), {}, ("style", "turtleneck"), 1),
            Item("i", "", ("a", "b", "c"), {"style": "turtleneck"}, "m", 1),
            1,
        ),
        # same mid category: related; same top: mismatch; elsewhere: irrelevant
        (Query("tops", ("a", "b", "c"), {}, None, 1), Item("i", "", ("a", "b", "x"), {}, "m", 1), 2),
        (Query("tops", ("a", "b", "c"), {}, None, 1), Item("i", "", ("a", "y", "x"), {}, "m", 1), 1),
        (Query("tops", ("a", "b", "c"), {}, None, 1), Item("i", "", ("z", "y", "x"), {}, "m", 1), 0),
        # an underspecified query ("apparel") is satisfied anywhere below it
        (Query("apparel", ("a",), {}, None, 1), Item("i", "", ("a", "y", "x"), {}, "m", 1), 3),
    ],
)
def test_relevance_rules(query: Query, item: Item, tier: int) -> None:
    assert relevance_tier(query, item) == tier


def test_truth_table_and_behaviour(tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    events = simulate(tmp_path, "w", "--requests", "4000", "--truth", str(truth))
    catalog = {
        x["item_id"]: x for x in map(orjson.loads, (truth / "catalog.jsonl").read_bytes().splitlines())
    }
    queries = {x["query"]: x for x in map(orjson.loads, (truth / "queries.jsonl").read_bytes().splitlines())}
    table = pq.read_table(truth / "relevance.parquet").to_pylist()
    assert table and all(1 <= r["tier"] <= 3 for r in table)
    for row in table[::50]:  # the table follows the rules, recomputed from the written truth
        q, it = queries[row["query"]], catalog[row["item_id"]]
        query = Query(
            q["query"], tuple(q["category"]), q["attrs"], tuple(q["negated"]) if q["negated"] else None, 1
        )
        item = Item(it["item_id"], it["title"], tuple(it["category"]), it["attrs"], "m", 1)
        assert relevance_tier(query, item) == row["tier"]
    heldout = (truth / "heldout.jsonl").read_bytes().splitlines()
    assert heldout  # kept aside, never emitted
    held_ids = {orjson.loads(x)["request_id"] for x in heldout}
    emitted = events.read_bytes()
    assert not any(f'"request_id":"{rid}"'.encode() in emitted for rid in held_ids)

    out = tmp_path / "replayed"
    subprocess.run(
        [sys.executable, "-m", "streamrl", "replay", str(events), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    by_pos: dict[int, list[bool]] = defaultdict(list)
    by_tier: dict[int, list[bool]] = defaultdict(list)
    for f in out.glob("*.parquet"):
        for rec in pq.read_table(f).to_pylist():
            for it in rec["items"]:
                by_pos[it["position"]].append(it["clicked"])
                by_tier[it["rel_tier"]].append(it["clicked"])
    ctr_pos = {p: sum(v) / len(v) for p, v in by_pos.items()}
    ctr_tier = {t: sum(v) / len(v) for t, v in by_tier.items()}
    assert ctr_pos[1] > ctr_pos[3] > ctr_pos[10]  # position bias
    assert ctr_tier[3] > ctr_tier[2] > ctr_tier[1] > ctr_tier[0]  # relevance dependence
