"""Deterministic duplicate dropping for readers of reward records.

After a joiner crash the rewards topic (and so the archive) can hold a second copy of a record the
joiner re-finalised while replaying from its committed offsets (docs/architecture.md, "Delivery").
All copies of a request's record go to the same rewards partition (the partition is chosen from the
joiner shard, which is the request's partition on the input topics), so "the first copy in offset
order wins" is a deterministic rule; every streamrl reader applies it through this class.
"""

from __future__ import annotations

from collections import OrderedDict


class FirstSeen:
    """Remembers up to `capacity` keys (oldest forgotten first); `first(key)` is True once per key."""

    def __init__(self, capacity: int = 5_000_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def first(self, key: str) -> bool:
        if key in self._keys:
            self.duplicates += 1
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True
