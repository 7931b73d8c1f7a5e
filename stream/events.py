"""The event contract (docs/architecture.md, "Events"): decode and validate one JSON value.

Values are JSON encoded with orjson. Extra fields are ignored; a missing or mistyped required field
makes the event malformed, and `decode_event` raises `Malformed` with a reason that names it. The
checks are written out by hand rather than through pydantic because they run once per event on the
joiner's hot path (bench/join_throughput.py measures them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class Malformed(ValueError):
    """An event that cannot be used; `reason` reads `malformed: <what>`."""

    @property
    def reason(self) -> str:
        return f"malformed: {self.args[0]}"


class ImpressedItem(NamedTuple):
    item_id: str
    position: int  # >= 1
    rel_tier: int  # 0..3, -1 = unknown (null in the event)


class Impression(NamedTuple):
    event_id: str
    request_id: str
    ts_ms: int
    user_id: str
    query: str
    items: tuple[ImpressedItem, ...]
    keywords: tuple[str, ...]


class Action(NamedTuple):
    """A click or an order: both attribute to (request_id, item_id)."""

    kind: str  # "click" | "order"
    event_id: str
    request_id: str
    ts_ms: int
    user_id: str
    item_id: str
    amount: float | None


class ItemEvent(NamedTuple):
    item_id: str
    ts_ms: int
    title: str
    category: tuple[str, ...]
    merchant_id: str
    attrs: dict[str, str]


Event = Impression | Action | ItemEvent


def _str(obj: dict[str, Any], key: str, *, empty_ok: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise Malformed(f"{key} {what}")
    if not value and not empty_ok:
        raise Malformed(f"{key} is empty")
    return value


def _int(obj: dict[str, Any], key: str, low: int = 0) -> int:
    value = obj.get(key)
    if type(value) is not int:  # bool is an int subclass: refuse it too
        what = "missing" if value is None else f"not an integer ({type(value).__name__})"
        raise Malformed(f"{key} {what}")
    if value < low:
        raise Malformed(f"{key} below {low}")
    return value


def _str_list(obj: dict[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Malformed(f"{key} {'missing' if value is None else 'not a list of strings'}")
    return tuple(value)


def _impressed(raw: Any, index: int) -> ImpressedItem:
    if not isinstance(raw, dict):
        raise Malformed(f"items[{index}] not an object")
    item_id = _str(raw, "item_id")
    position = raw.get("position")
    if type(position) is not int or position < 1:
        raise Malformed(f"items[{index}].position not an integer >= 1")
    if "rel_tier" not in raw:
        raise Malformed(f"items[{index}].rel_tier missing")
    tier = raw["rel_tier"]
    if tier is None:
        tier = -1
    elif type(tier) is not int or not 0 <= tier <= 3:
        raise Malformed(f"items[{index}].rel_tier not 0..3 or null")
    return ImpressedItem(item_id, position, tier)


def _impression(obj: dict[str, Any]) -> Impression:
    raw_items = obj.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise Malformed("items missing or empty")
    items = tuple(_impressed(raw, i) for i, raw in enumerate(raw_items))
    if len({it.item_id for it in items}) != len(items):
        raise Malformed("items repeat an item_id")
    return Impression(
        _str(obj, "event_id"),
        _str(obj, "request_id"),
        _int(obj, "ts_ms"),
        _str(obj, "user_id"),
        _str(obj, "query", empty_ok=True),
        items,
        _str_list(obj, "keywords", required=False),
    )


def _action(obj: dict[str, Any], kind: str) -> Action:
    amount = obj.get("amount")
    if amount is not None and (type(amount) not in (int, float) or amount != amount):
        raise Malformed("amount not a number")
    return Action(
        kind,
        _str(obj, "event_id"),
        _str(obj, "request_id"),
        _int(obj, "ts_ms"),
        _str(obj, "user_id"),
        _str(obj, "item_id"),
        None if amount is None else float(amount),
    )


def _item(obj: dict[str, Any]) -> ItemEvent:
    attrs = obj.get("attrs") or {}
    if not isinstance(attrs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        raise Malformed("attrs not an object of strings")
    return ItemEvent(
        _str(obj, "item_id"),
        _int(obj, "ts_ms"),
        _str(obj, "title", empty_ok=True),
        _str_list(obj, "category", required=True),
        _str(obj, "merchant_id", empty_ok=True),
        attrs,
    )


def parse_event(obj: Any) -> Event:
    """Validate an already-decoded JSON value into an event."""
    if not isinstance(obj, dict):
        raise Malformed(f"not a JSON object ({type(obj).__name__})")
    kind = obj.get("type")
    if kind == "impression":
        return _impression(obj)
    if kind == "click" or kind == "order":
        return _action(obj, kind)
    if kind == "item":
        return _item(obj)
    raise Malformed("type missing" if kind is None else f"unknown type {kind!r}")


def decode_event(raw: bytes | str | None) -> Event:
    """Decode one message value (orjson) and validate it."""
    if raw is None:
        raise Malformed("empty value")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"not JSON ({exc.msg})") from None
    return parse_event(obj)


def encode_event(event: dict[str, Any]) -> bytes:
    """The wire form of an event (what producers write): orjson bytes."""
    return orjson.dumps(event)
