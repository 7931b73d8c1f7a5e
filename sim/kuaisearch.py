"""`streamrl import kuaisearch DIR`: the KuaiSearch log layout (the OneSearch authors' released
dataset format) into contract events.

Read when present in DIR (a missing file is a warning, a bad line a warning naming file and line):
- `items.jsonl`   → item events: item_id, item_title → title, category_level{1,2,3}_name → category,
                    seller_id → merchant_id, brand_name → attrs.brand.
- `recall.jsonl`  → per line (one search session) one impression (positions in list order), a click per
                    clicked id and an order per purchased id.
- `relevance.jsonl` → rel_tier of an impressed item when (query, item_title) matches a line (score 0–3).
- `users.jsonl`, `rank.jsonl` are ignored: users' profile features are not part of the event contract,
  and rank.jsonl is the ranking stage's view of the same sessions, whose impressions recall.jsonl has.

Time mapping (the layout has no timestamps): a session's impression is at
`BASE + time_index * time_index_s` (default 60 s per unit; BASE 2026-01-01T00:00:00Z), its j-th
clicked id at impression + 5 s * (j + 1), each purchased id at impression + 5 min (inside the
default 10-minute attribution window). Ids become strings. request_id = "ks-<session_id>", with
"-<line>" appended when a session_id repeats. A clicked or purchased id that is not in the
impressed list is appended to the impression after the last position (counted in the warnings), so
every record's flags equal the session's ids. Impressed items absent from items.jsonl get item
events with an empty title and category.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

BASE_MS = 1_767_225_600_000


def _lines(path: Path, warn: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        print(f"warning: {path} not found, skipped", file=warn)
        return
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                print(f"warning: {path}:{lineno}: not JSON ({exc.msg}), skipped", file=warn)
                continue
            if not isinstance(obj, dict):
                print(f"warning: {path}:{lineno}: not an object, skipped", file=warn)
                continue
            yield lineno, obj


def _ids(obj: dict[str, Any], key: str) -> list[str]:
    value = obj.get(key) or []
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return [str(v) for v in value]


def import_kuaisearch(
    folder: Path, out: Path, time_index_s: float = 60.0, warn: TextIO = sys.stderr
) -> Counter[str]:
    counts: Counter[str] = Counter()
    titles: dict[str, str] = {}
    item_events: dict[str, dict[str, Any]] = {}
    for lineno, obj in _lines(folder / "items.jsonl", warn):
        if obj.get("item_id") is None:
            print(f"warning: {folder / 'items.jsonl'}:{lineno}: no item_id, skipped", file=warn)
            continue
        iid = str(obj["item_id"])
        titles[iid] = str(obj.get("item_title") or "")
        category = [
            str(obj[k])
            for k in ("category_level1_name", "category_level2_name", "category_level3_name")
            if obj.get(k) is not None
        ]
        attrs = {"brand": str(obj["brand_name"])} if obj.get("brand_name") is not None else {}
        item_events[iid] = {
            "type": "item",
            "item_id": iid,
            "ts_ms": BASE_MS,
            "title": titles[iid],
            "category": category,
            "merchant_id": str(obj.get("seller_id") or ""),
            "attrs": attrs,
        }
    tiers: dict[tuple[str, str], int] = {}
    for lineno, obj in _lines(folder / "relevance.jsonl", warn):
        try:
            tier = round(float(obj["score"]))
            if not 0 <= tier <= 3:
                raise ValueError("score outside 0..3")
            tiers[(str(obj["query"]), str(obj["item_title"]))] = tier
        except (KeyError, TypeError, ValueError) as exc:
            print(f"warning: {folder / 'relevance.jsonl'}:{lineno}: {exc}, skipped", file=warn)
    sessions: list[tuple[int, dict[str, Any]]] = list(_lines(folder / "recall.jsonl", warn))
    repeated = Counter(str(obj.get("session_id")) for _, obj in sessions)
    requests: list[tuple[int, int, list[dict[str, Any]]]] = []
    for lineno, obj in sessions:
        try:
            events = _session_events(obj, lineno, repeated, tiers, titles, time_index_s, counts)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"warning: {folder / 'recall.jsonl'}:{lineno}: {exc}, skipped", file=warn)
            counts["sessions_skipped"] += 1
            continue
        for ev in events:
            if ev["type"] == "impression":
                for it in ev["items"]:
                    item_events.setdefault(
                        it["item_id"],
                        {
                            "type": "item",
                            "item_id": it["item_id"],
                            "ts_ms": BASE_MS,
                            "title": "",
                            "category": [],
                            "merchant_id": "",
                        },
                    )
        requests.append((events[0]["ts_ms"], lineno, events))
    with open(out, "wb") as fh:
        for ev in item_events.values():
            fh.write(orjson.dumps(ev) + b"\n")
        counts["items"] = len(item_events)
        for _, _, events in sorted(requests, key=lambda r: (r[0], r[1])):
            for ev in events:
                fh.write(orjson.dumps(ev) + b"\n")
                counts[ev["type"] + "s"] += 1
    if counts["appended_to_impression"]:
        print(
            f"warning: {counts['appended_to_impression']} clicked/purchased ids were not in "
            "their impressed list and were appended to it",
            file=warn,
        )
    return counts


def _session_events(
    obj: dict[str, Any],
    lineno: int,
    repeated: Counter[str],
    tiers: dict[tuple[str, str], int],
    titles: dict[str, str],
    time_index_s: float,
    counts: Counter[str],
) -> list[dict[str, Any]]:
    session = str(obj["session_id"])
    rid = f"ks-{session}" if repeated[session] == 1 else f"ks-{session}-{lineno}"
    user, query = str(obj["user_id"]), str(obj["query"])
    try:  # an integer, or an integer written as a float or a string
        time_index = int(float(obj["time_index"]))
    except (TypeError, ValueError):
        raise ValueError(f"time_index {obj['time_index']!r} is not a number") from None
    ts = BASE_MS + int(time_index * time_index_s * 1000)
    shown = list(dict.fromkeys(_ids(obj, "impressed_item_ids")))
    clicked, bought = _ids(obj, "clicked_item_ids"), _ids(obj, "purchased_item_ids")
    for iid in clicked + bought:
        if iid not in shown:
            shown.append(iid)
            counts["appended_to_impression"] += 1
    if not shown:
        raise ValueError("no impressed items")
    items = [
        {"item_id": iid, "position": p, "rel_tier": tiers.get((query, titles.get(iid, "")))}
        for p, iid in enumerate(shown, start=1)
    ]
    events: list[dict[str, Any]] = [
        {
            "type": "impression",
            "event_id": f"{rid}-i",
            "request_id": rid,
            "ts_ms": ts,
            "user_id": user,
            "query": query,
            "items": items,
        }
    ]
    for j, iid in enumerate(dict.fromkeys(clicked)):
        events.append(
            {
                "type": "click",
                "event_id": f"{rid}-c-{iid}",
                "request_id": rid,
                "ts_ms": ts + 5_000 * (j + 1),
                "user_id": user,
                "item_id": iid,
            }
        )
    for iid in dict.fromkeys(bought):
        events.append(
            {
                "type": "order",
                "event_id": f"{rid}-o-{iid}",
                "request_id": rid,
                "ts_ms": ts + 300_000,
                "user_id": user,
                "item_id": iid,
            }
        )
    counts["sessions"] += 1
    return events
