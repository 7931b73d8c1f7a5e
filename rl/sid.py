"""Semantic IDs: residual k-means over item embeddings (coarse → fine), then unique-feature levels so
that every item gets a distinct SID of length L = len(levels) + unique levels (default 3 + 2).

Residual k-means: level 1 clusters the embeddings, level 2 the residuals after subtracting the level-1
centroid, and so on; k is capped at the number of items so small catalogs work. Unique levels: items
sharing a residual prefix are numbered in a stable order (item_id) and the number is written in base
`size` over the unique levels, so `2x16` tells apart up to 256 items per prefix. Items beyond that
collide; `stats()` reports collisions and balance. New items get codes from the stored centroids and
the next free unique number of their prefix, without rebuilding.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm with k-means++ seeding; returns (centroids [k, D], labels [N])."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = max(1, min(k, n))
    centroids = np.empty((k, x.shape[1]), dtype=np.float64)
    centroids[0] = x[rng.integers(n)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for j in range(1, k):  # k-means++: far points are likelier seeds
        total = d2.sum()
        idx = rng.integers(n) if total <= 0 else int(rng.choice(n, p=d2 / total))
        centroids[j] = x[idx]
        d2 = np.minimum(d2, ((x - centroids[j]) ** 2).sum(1))
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        labels = _nearest(x, centroids)
        moved = False
        for j in range(k):
            members = x[labels == j]
            if len(members):
                new = members.mean(0)
                moved |= not np.allclose(new, centroids[j])
                centroids[j] = new
        if not moved:
            break
    return centroids, _nearest(x, centroids)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.asarray(d.argmin(1), dtype=np.int64)


@dataclass
class SidCodebook:
    levels: tuple[int, ...]  # residual k-means sizes, e.g. (256, 256, 256)
    unique: tuple[int, int]  # (levels, size), e.g. (2, 16)
    centroids: list[np.ndarray] = field(default_factory=list)
    sids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _next_unique: dict[tuple[int, ...], int] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.levels) + self.unique[0]

    def build(self, item_ids: Sequence[str], x: np.ndarray, seed: int = 0) -> SidCodebook:
        residual = x.astype(np.float64)
        codes = np.zeros((len(item_ids), len(self.levels)), dtype=np.int64)
        self.centroids = []
        for lvl, k in enumerate(self.levels):
            centroids, labels = kmeans(residual, k, seed + lvl)
            self.centroids.append(centroids)
            codes[:, lvl] = labels
            residual = residual - centroids[labels]
        order = sorted(range(len(item_ids)), key=lambda i: item_ids[i])
        for i in order:
            self._add(item_ids[i], tuple(int(c) for c in codes[i]))
        return self

    def _add(self, item_id: str, prefix: tuple[int, ...]) -> tuple[int, ...]:
        n_levels, size = self.unique
        number = self._next_unique.get(prefix, 0)
        self._next_unique[prefix] = number + 1
        capped = min(number, size**n_levels - 1)  # beyond capacity: a collision, reported
        digits = [(capped // size**p) % size for p in reversed(range(n_levels))]
        sid = (*prefix, *digits)
        self.sids[item_id] = sid
        return sid

    def assign(self, item_id: str, x: np.ndarray) -> tuple[int, ...]:
        """A new item's SID from the stored centroids (no rebuild); an existing item keeps its own."""
        if item_id in self.sids:
            return self.sids[item_id]
        residual = x.astype(np.float64).reshape(1, -1)
        prefix = []
        for centroids in self.centroids:
            label = int(_nearest(residual, centroids)[0])
            prefix.append(label)
            residual = residual - centroids[label]
        return self._add(item_id, tuple(prefix))

    def stats(self) -> dict[str, Any]:
        full = Counter(self.sids.values())
        prefixes = Counter(s[: len(self.levels)] for s in self.sids.values())
        per_level = [len({s[lvl] for s in self.sids.values()}) for lvl in range(self.length)]
        return {
            "items": len(self.sids),
            "distinct_sids": len(full),
            "colliding_items": sum(c for c in full.values() if c > 1),
            "distinct_prefixes": len(prefixes),
            "largest_prefix_group": max(prefixes.values(), default=0),
            "codes_used_per_level": per_level,
        }

    def by_sid(self) -> dict[tuple[int, ...], list[str]]:
        out: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for item_id, sid in self.sids.items():
            out[sid].append(item_id)
        return out
