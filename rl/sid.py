"""Semantic IDs: residual k-means over item embeddings (coarse → fine), then unique-feature levels so
that every item gets a distinct SID of length L = len(levels) + unique levels (default 3 + 2).

Residual k-means: level 1 clusters the embeddings, level 2 the residuals after subtracting the level-1
centroid, and so on; k is capped at the number of items so small catalogs work. Unique levels: items
sharing a residual prefix are numbered in a stable order (item_id) and the number is written in base
`size` over the unique levels, so `2x16` tells apart up to 256 items per prefix. A build whose
largest prefix group is over that capacity is refused (`CodebookError`, naming the group and the
`--unique` that would fit) instead of giving two items one SID; `stats()` reports how many items
share a prefix. New items get codes from the stored centroids and the next free unique number of
their prefix, without rebuilding or re-IDing anyone; a new item on a full prefix is refused the same way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
        # every centroid's mean in one pass (a loop over k masks cost k passes over x per iteration)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        new = centroids.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        moved = not np.allclose(new, centroids)
        centroids = new
        if not moved:
            break
    return centroids, _nearest(x, centroids)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.asarray(d.argmin(1), dtype=np.int64)


class CodebookError(ValueError):
    """A codebook that would give two items one SID: refused, with what would fit."""


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
        groups = Counter(tuple(int(c) for c in row) for row in codes)
        prefix, largest = max(groups.items(), key=lambda kv: kv[1], default=((), 0))
        if largest > self.capacity:
            over = sum(c - self.capacity for c in groups.values() if c > self.capacity)
            raise CodebookError(
                f"{largest} items share the prefix {prefix}, over the {self.capacity} the unique levels "
                f"{self.unique[0]}x{self.unique[1]} can tell apart ({over} items would collide): use "
                f"--unique {self.fitting_unique(largest)}, or larger k-means levels"
            )
        order = sorted(range(len(item_ids)), key=lambda i: item_ids[i])
        for i in order:
            self._add(item_ids[i], tuple(int(c) for c in codes[i]))
        return self

    @property
    def capacity(self) -> int:
        """Items one prefix can hold: size ** unique levels."""
        return int(self.unique[1] ** self.unique[0])

    def fitting_unique(self, group: int) -> str:
        """The smallest `LEVELSxSIZE` (same size) whose capacity holds `group` items."""
        n, size = 1, self.unique[1]
        while size**n < group:
            n += 1
        return f"{n}x{size}"

    def _add(self, item_id: str, prefix: tuple[int, ...]) -> tuple[int, ...]:
        n_levels, size = self.unique
        number = self._next_unique.get(prefix, 0)
        if number >= self.capacity:
            raise CodebookError(
                f"item {item_id}: its prefix {prefix} already holds {number} items, the capacity of the "
                f"unique levels {n_levels}x{size}; rebuild with --unique {self.fitting_unique(number + 1)}"
            )
        self._next_unique[prefix] = number + 1
        digits = [(number // size**p) % size for p in reversed(range(n_levels))]
        sid = (*prefix, *digits)
        self.sids[item_id] = sid
        return sid

    def place(self, item_id: str, sid: tuple[int, ...]) -> None:
        """An item whose SID was assigned elsewhere (a file, rank 0): recorded, and its prefix's next
        free unique number moved past it."""
        self.sids[item_id] = sid
        n_levels, size = self.unique
        number = sum(
            c * size**p for c, p in zip(sid[len(self.levels) :], reversed(range(n_levels)), strict=True)
        )
        prefix = sid[: len(self.levels)]
        self._next_unique[prefix] = max(self._next_unique.get(prefix, 0), number + 1)

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
            # items whose residual prefix another item shares (told apart by the unique levels only)
            "items_sharing_a_prefix": sum(c for c in prefixes.values() if c > 1),
            "largest_prefix_group": max(prefixes.values(), default=0),
            "prefix_capacity": self.capacity,
            "codes_used_per_level": per_level,
        }

    def by_sid(self) -> dict[tuple[int, ...], list[str]]:
        out: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for item_id, sid in self.sids.items():
            out[sid].append(item_id)
        return out


# -- files ------------------------------------------------------------------------------------------
CODEBOOK_FILE = "sid_codebook.parquet"
CENTROIDS_FILE = "sid_centroids.safetensors"
META_FILE = "sid_meta.json"


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str
    category: tuple[str, ...]
    merchant_id: str
    attrs: dict[str, str]

    def text(self) -> str:
        """What the encoder reads: title, category path, attributes."""
        attrs = " ".join(f"{k} {v}" for k, v in sorted(self.attrs.items()))
        return " | ".join(x for x in (self.title, " > ".join(self.category), attrs) if x)


def level_sizes(book: SidCodebook) -> list[int]:
    """Codes per SID position: the residual levels, then the unique-suffix digits."""
    return [*book.levels, *([book.unique[1]] * book.unique[0])]


def save_codebook(
    book: SidCodebook,
    items: dict[str, CatalogItem],
    out: Path,
    encoder: str,
    version: int = 0,
    encoder_spec: str | None = None,
) -> None:
    """The codebook files; `version` counts the codebook's incremental growths (0: as built);
    `encoder_spec` is what `load_encoder` takes to embed new items the same way (`minilm`, `hash-256`, a
    folder)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(book.sids)
    empty = CatalogItem("", "", (), "", {})
    table = pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "sid": pa.array([list(book.sids[i]) for i in ids], pa.list_(pa.int32())),
            "merchant_id": pa.array([items.get(i, empty).merchant_id for i in ids], pa.string()),
            "category": pa.array([list(items.get(i, empty).category) for i in ids], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, out / CODEBOOK_FILE)
    save_file(
        {f"level_{i}": c.astype(np.float32) for i, c in enumerate(book.centroids)}, str(out / CENTROIDS_FILE)
    )
    (out / META_FILE).write_text(
        json.dumps(
            {
                "levels": list(book.levels),
                "unique": list(book.unique),
                "encoder": encoder,
                "encoder_spec": encoder_spec,
                "length": book.length,
                "version": version,
                "items": len(book.sids),
            },
            indent=2,
        )
    )


def load_codebook(folder: Path) -> tuple[SidCodebook, dict[str, Any]]:
    import json

    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    meta = json.loads((folder / META_FILE).read_text())
    book = SidCodebook(tuple(meta["levels"]), (meta["unique"][0], meta["unique"][1]))
    tensors = load_file(str(folder / CENTROIDS_FILE))
    book.centroids = [tensors[f"level_{i}"].astype(np.float64) for i in range(len(book.levels))]
    for row in pq.read_table(folder / CODEBOOK_FILE).to_pylist():
        book.place(row["item_id"], tuple(row["sid"]))
    return book, meta
