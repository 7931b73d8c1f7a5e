"""Hostile events for the chaos suite (issue #14's table), built around a clean synthetic stream."""

from __future__ import annotations

import orjson

from streamrl.stream.synthetic import SynthSpec, generate

SPEC = SynthSpec(
    requests=400,
    seed=5,
    rate_per_s=20,
    window_ms=20_000,
    click_delay_ms=8_000,
    order_delay_ms=10_000,
    disorder_ms=2_000,
)
YEAR = 365 * 24 * 3600 * 1000  # ms


def clean() -> list[bytes]:
    return [raw for _, raw in generate(SPEC)]


def hostile(
    lines: list[bytes], query_bytes: int = 1 << 20, big: int = 80, now_ms: int | None = None
) -> dict[str, list[bytes]]:
    """Each kind of bad event of the table, derived from the clean stream, by the reason it must get.
    The future click is a year ahead of the log (replay), or of `now_ms` (the live joiner's clock)."""
    events = [orjson.loads(x) for x in lines]
    clicks = [e for e in events if e["type"] == "click"]
    imps = [e for e in events if e["type"] == "impression"]
    ahead = (now_ms or clicks[2]["ts_ms"]) + YEAR
    deep = {**clicks[0], "event_id": "deep-1", "extra": 0}
    deep_raw = orjson.dumps(deep)[:-1] + b',"nest":' + b"[" * 1000 + b"]" * 1000 + b"}"
    return {
        "nested deeper than": [deep_raw],
        "$.ts_ms": [orjson.dumps({**clicks[1], "event_id": "overflow-1", "ts_ms": 2**63})],
        "future": [orjson.dumps({**clicks[2], "event_id": "future-1", "ts_ms": ahead})],
        "reused_event_id": [
            orjson.dumps({**c, "item_id": c["item_id"] + "-other"})
            for c in clicks[5:60]  # 55, as found
        ],
        "max_event_bytes": [
            orjson.dumps(
                {**imp, "event_id": f"big-{i}", "request_id": f"big-{i}", "query": "q" * query_bytes}
            )
            for i, imp in enumerate(imps[:big])
        ],
    }


def mixed(lines: list[bytes], bad: dict[str, list[bytes]]) -> list[bytes]:
    """The clean stream with the bad events spread through its second half (after the originals a
    reused event id copies)."""
    half = len(lines) // 2
    flat = [x for xs in bad.values() for x in xs]
    step = max(half // (len(flat) + 1), 1)
    out = lines[:half]
    rest = lines[half:]
    for raw in flat:
        out += [*rest[:step], raw]
        rest = rest[step:]
    return out + rest
