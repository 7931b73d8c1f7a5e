"""The event contract: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import orjson
import pytest

from streamrl.stream.events import Click, Impression, ItemEvent, Malformed, Order, decode_event

IMP = {
    "type": "impression",
    "event_id": "e1",
    "request_id": "r1",
    "ts_ms": 1000,
    "user_id": "u",
    "query": "knitwear, no turtleneck",
    "items": [
        {"item_id": "a", "position": 1, "rel_tier": 3},
        {"item_id": "b", "position": 2, "rel_tier": None},
    ],
}
CLICK = {"type": "click", "event_id": "e2", "request_id": "r1", "ts_ms": 2000, "user_id": "u", "item_id": "a"}


def test_valid_events_decode_to_their_types() -> None:
    imp = decode_event(orjson.dumps({**IMP, "extra": {"ignored": True}, "keywords": ["wool"]}))
    assert isinstance(imp, Impression)
    assert [(i.item_id, i.position, i.rel_tier) for i in imp.items] == [("a", 1, 3), ("b", 2, None)]
    assert imp.keywords == ("wool",)
    assert isinstance(decode_event(orjson.dumps(CLICK)), Click)
    order = decode_event(orjson.dumps({**CLICK, "type": "order", "amount": 12}))
    assert isinstance(order, Order) and order.amount == 12.0
    item = decode_event(
        b'{"type":"item","item_id":"a","ts_ms":1,"title":"t","category":["x","y"],"merchant_id":"m"}'
    )
    assert isinstance(item, ItemEvent) and item.category == ("x", "y") and item.attrs == {}


def test_unicode_query_survives() -> None:
    imp = decode_event(orjson.dumps({**IMP, "query": "红色 连衣裙 🎉"}))
    assert isinstance(imp, Impression) and imp.query == "红色 连衣裙 🎉"


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b"", "empty value"),
        (b"not json", "not JSON"),
        (b"[1,2]", "Expected `object`"),
        (orjson.dumps({**CLICK, "type": "view"}), "Invalid value 'view'"),
        (orjson.dumps({k: v for k, v in CLICK.items() if k != "type"}), "type"),
        (orjson.dumps({k: v for k, v in CLICK.items() if k != "item_id"}), "item_id"),
        (orjson.dumps({**CLICK, "ts_ms": "1000"}), "$.ts_ms"),
        (orjson.dumps({**CLICK, "ts_ms": 1.5}), "$.ts_ms"),
        (orjson.dumps({**CLICK, "ts_ms": True}), "$.ts_ms"),
        (orjson.dumps({**CLICK, "ts_ms": -1}), "$.ts_ms"),
        (orjson.dumps({**CLICK, "event_id": ""}), "$.event_id"),
        (orjson.dumps({**CLICK, "type": "order", "amount": "12"}), "$.amount"),
        (orjson.dumps({**IMP, "items": []}), "$.items"),
        (
            orjson.dumps({**IMP, "items": [{"item_id": "a", "position": 0, "rel_tier": 1}]}),
            "$.items[0].position",
        ),
        (
            orjson.dumps({**IMP, "items": [{"item_id": "a", "position": 1, "rel_tier": 4}]}),
            "$.items[0].rel_tier",
        ),
        (orjson.dumps({**IMP, "items": [{"item_id": "a", "position": 1}]}), "rel_tier"),
        (orjson.dumps({**IMP, "items": [IMP["items"][0], IMP["items"][0]]}), "repeat an item_id"),
        (orjson.dumps({**IMP, "keywords": "wool"}), "$.keywords"),
    ],
)
def test_malformed_events_name_what_is_wrong(raw: bytes, reason_part: str) -> None:
    with pytest.raises(Malformed) as info:
        decode_event(raw)
    assert info.value.reason.startswith("malformed: ")
    assert reason_part in info.value.reason
