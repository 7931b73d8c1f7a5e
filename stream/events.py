"""The event contract (docs/architecture.md, "Events"): typed decode of one JSON value.

Producers encode events with orjson (`stream.kafka_io.produce_events`, the simulators). The joiner
decodes and validates them in one C pass with msgspec typed structs: faster than `orjson.loads`
into dicts alone (bench/join_throughput.py), and a schema written as types is the clearest statement
of the contract. Extra fields are ignored; a missing or mistyped required field makes the event
malformed, and `decode_event` raises `Malformed` whose reason names the field
(`malformed: Expected `int`, got `str` - at `$.items[0].position``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from streamrl.configs.schema import JoinConfig

# gc=False: events hold only strings, numbers and other events, never cycles, so the cyclic GC need
# not track the hundreds of thousands of them that open join state keeps alive.
MAX_ID_CHARS = 256  # event, request, user, item, merchant ids and categories
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: event time fits int64 and datetime everywhere
NonEmpty = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
Id = Annotated[str, Meta(max_length=MAX_ID_CHARS)]
Millis = Annotated[int, Meta(ge=0, le=MAX_TS_MS)]


@dataclass(frozen=True)
class Limits:
    """Per-deployment event bounds (join.max_event_bytes, max_depth, max_query_chars, max_items)."""

    max_bytes: int = 65_536
    max_depth: int = 16
    max_query_chars: int = 1_024
    max_items: int = 500


DEFAULT_LIMITS = Limits()
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


def _depth(raw: bytes) -> int:
    """JSON nesting depth of `raw`, brackets inside strings ignored."""
    depth = deepest = 0
    for c in _STRINGS.sub(b"", raw):
        if c in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif c in _CLOSE:
            depth -= 1
    return deepest


class Malformed(ValueError):
    """An event that cannot be used; `reason` reads `malformed: <what>`."""

    @property
    def reason(self) -> str:
        return f"malformed: {self.args[0]}"


class ImpressedItem(Struct, frozen=True, gc=False):
    item_id: NonEmpty
    position: Annotated[int, Meta(ge=1)]
    rel_tier: Annotated[int, Meta(ge=0, le=3)] | None  # required key; null = unknown


class Impression(Struct, frozen=True, gc=False, tag_field="type", tag="impression"):
    event_id: NonEmpty
    request_id: NonEmpty
    ts_ms: Millis
    user_id: Id
    query: str
    items: Annotated[tuple[ImpressedItem, ...], Meta(min_length=1)]
    keywords: tuple[str, ...] = ()


class Click(Struct, frozen=True, gc=False, tag_field="type", tag="click"):
    event_id: NonEmpty
    request_id: NonEmpty
    ts_ms: Millis
    user_id: Id
    item_id: NonEmpty


class Order(Struct, frozen=True, gc=False, tag_field="type", tag="order"):
    event_id: NonEmpty
    request_id: NonEmpty
    ts_ms: Millis
    user_id: Id
    item_id: NonEmpty
    amount: float | None = None


class ItemEvent(Struct, frozen=True, tag_field="type", tag="item"):
    item_id: NonEmpty
    ts_ms: Millis
    title: str
    category: tuple[str, ...]
    merchant_id: str
    attrs: dict[str, str] = {}


Action = Click | Order
Event = Impression | Click | Order | ItemEvent

_decoder = msgspec.json.Decoder(Event)


def decode_event(raw: bytes | str | None, limits: Limits = DEFAULT_LIMITS) -> Event:
    """Decode one message value and validate it against the contract and `limits`."""
    if not raw:
        raise Malformed("empty value")
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > limits.max_bytes:
        raise Malformed(f"event of {len(data)} bytes, over join.max_event_bytes={limits.max_bytes}")
    # the exact depth scan runs only when there are enough brackets to be too deep
    if data.count(b"[") + data.count(b"{") > limits.max_depth and _depth(data) > limits.max_depth:
        raise Malformed(f"JSON nested deeper than join.max_depth={limits.max_depth}")
    try:
        ev = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise Malformed(str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Malformed(f"not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if type(ev) is Impression:
        if len(ev.query) > limits.max_query_chars:
            raise Malformed(
                f"query of {len(ev.query)} characters, over join.max_query_chars={limits.max_query_chars}"
            )
        if len(ev.items) > limits.max_items:
            raise Malformed(f"{len(ev.items)} items, over join.max_items={limits.max_items}")
        if len({it.item_id for it in ev.items}) != len(ev.items):
            raise Malformed("items repeat an item_id")
    return ev


def limits_of(cfg: JoinConfig) -> Limits:
    return Limits(cfg.max_event_bytes, cfg.max_depth, cfg.max_query_chars, cfg.max_items)
