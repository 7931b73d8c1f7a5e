"""The event contract (docs/architecture.md, "Events"): typed decode of one JSON value.

Producers encode events with orjson (`stream.kafka_io.produce_events`, the simulators). The joiner
decodes and validates them in one C pass with msgspec typed structs: faster than `orjson.loads`
into dicts alone (bench/join_throughput.py), and a schema written as types is the clearest statement
of the contract. Extra fields are ignored; a missing or mistyped required field makes the event
malformed, and `decode_event` raises `Malformed` whose reason names the field
(`malformed: Expected `int`, got `str` - at `$.items[0].position``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

# gc=False: events hold only strings, numbers and other events, never cycles, so the cyclic GC need
# not track the hundreds of thousands of them that open join state keeps alive.
NonEmpty = Annotated[str, Meta(min_length=1)]
Millis = Annotated[int, Meta(ge=0)]


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
    user_id: str
    query: str
    items: Annotated[tuple[ImpressedItem, ...], Meta(min_length=1)]
    keywords: tuple[str, ...] = ()


class Click(Struct, frozen=True, gc=False, tag_field="type", tag="click"):
    event_id: NonEmpty
    request_id: NonEmpty
    ts_ms: Millis
    user_id: str
    item_id: NonEmpty


class Order(Struct, frozen=True, gc=False, tag_field="type", tag="order"):
    event_id: NonEmpty
    request_id: NonEmpty
    ts_ms: Millis
    user_id: str
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


def decode_event(raw: bytes | str | None) -> Event:
    """Decode one message value and validate it against the contract."""
    if not raw:
        raise Malformed("empty value")
    try:
        ev = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise Malformed(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Malformed(f"not JSON ({exc})") from None
    if type(ev) is Impression and len({it.item_id for it in ev.items}) != len(ev.items):
        raise Malformed("items repeat an item_id")
    return ev
