"""The catalog the SID stage reads: item events (JSON lines) or a simulated world's truth folder."""

from __future__ import annotations

from pathlib import Path

import orjson

from streamrl.rl.sid import CatalogItem
from streamrl.stream.events import ItemEvent, Malformed, decode_event


def read_catalog(items: Path | None, world_truth: Path | None) -> dict[str, CatalogItem]:
    out: dict[str, CatalogItem] = {}
    if items is not None:
        with open(items, "rb") as fh:
            for line in fh:
                try:
                    ev = decode_event(line)
                except Malformed:
                    continue  # requests and bad lines are not catalog entries
                if isinstance(ev, ItemEvent):  # the latest event of an item wins
                    out[ev.item_id] = CatalogItem(
                        ev.item_id, ev.title, ev.category, ev.merchant_id, dict(ev.attrs)
                    )
    elif world_truth is not None:
        with open(world_truth / "catalog.jsonl", "rb") as fh:
            for line in fh:
                row = orjson.loads(line)
                out[row["item_id"]] = CatalogItem(
                    row["item_id"],
                    row["title"],
                    tuple(row["category"]),
                    row["merchant_id"],
                    row.get("attrs") or {},
                )
    if not out:
        raise ValueError("no items found")
    return out
