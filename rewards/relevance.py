"""Relevance of generated items a request did not show (R_Rel of Eq.10 outside the impression).

Items in the impression carry the join's `rel_tier`. For any other item the learner asks a source,
once per request, for the tiers (0–3) of all the items its rollouts named:

- `catalog` (default): `category_relevance` against the request's reference items — no extra data.
- `table`: a Parquet table (query, item_id, tier), e.g. the simulated world's ground truth
  (`simulate --truth DIR` writes DIR/relevance.parquet, listing every pair with tier > 0 for the
  queries in play). A pair missing for a listed query is tier 0; a query not listed at all falls back
  to `catalog`.
- `http`: a production relevance service. `POST url {"query": str, "item_ids": [str]}` answers
  `{"tiers": [int]}` (same order). A timeout, an error or a malformed answer falls back to `catalog`
  for that request and is counted (`errors`), so a flaky service slows nothing and stops nothing.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from streamrl.rewards.item import category_relevance

log = logging.getLogger("streamrl.relevance")
Category = tuple[str, ...]


class RelevanceSource(Protocol):
    name: str
    errors: int

    def tiers(self, query: str, item_ids: Sequence[str], reference: Sequence[Category]) -> list[int]: ...


class CategoryRelevance:
    name = "catalog"

    def __init__(self, categories: Mapping[str, Category]) -> None:
        self.categories = categories
        self.errors = 0

    def tiers(self, query: str, item_ids: Sequence[str], reference: Sequence[Category]) -> list[int]:
        return [category_relevance(self.categories.get(i, ()), reference) for i in item_ids]


class TableRelevance:
    name = "table"

    def __init__(self, path: Path, fallback: RelevanceSource) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["query", "item_id", "tier"]).to_pydict()
        self.table: dict[str, dict[str, int]] = {}
        for q, item, tier in zip(table["query"], table["item_id"], table["tier"], strict=True):
            if not 0 <= int(tier) <= 3:
                raise ValueError(f"{path}: tier {tier} for ({q!r}, {item!r}) is outside 0..3")
            self.table.setdefault(q, {})[item] = int(tier)
        self.fallback = fallback
        self.errors = 0

    def tiers(self, query: str, item_ids: Sequence[str], reference: Sequence[Category]) -> list[int]:
        known = self.table.get(query)
        if known is None:
            return self.fallback.tiers(query, item_ids, reference)
        return [known.get(i, 0) for i in item_ids]


class HttpRelevance:
    name = "http"

    def __init__(self, url: str, timeout_s: float, fallback: RelevanceSource) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.fallback = fallback
        self.errors = 0

    def tiers(self, query: str, item_ids: Sequence[str], reference: Sequence[Category]) -> list[int]:
        if not item_ids:
            return []
        body = json.dumps({"query": query, "item_ids": list(item_ids)}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                tiers = json.loads(resp.read())["tiers"]
            if len(tiers) != len(item_ids) or not all(isinstance(t, int) and 0 <= t <= 3 for t in tiers):
                raise ValueError(f"expected {len(item_ids)} tiers in 0..3, got {tiers!r:.200}")
            return list(tiers)
        except Exception as exc:  # any failure of the service falls back, counted
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                log.warning("relevance service %s failed (%d so far): %s", self.url, self.errors, exc)
            return self.fallback.tiers(query, item_ids, reference)


def make_relevance(
    source: str,
    categories: Mapping[str, Category],
    path: str | None = None,
    url: str | None = None,
    timeout_s: float = 1.0,
) -> RelevanceSource:
    catalog = CategoryRelevance(categories)
    if source == "catalog":
        return catalog
    if source == "table":
        if not path:
            raise ValueError("relevance source 'table' needs learn.relevance.path")
        return TableRelevance(Path(path), catalog)
    if source == "http":
        if not url:
            raise ValueError("relevance source 'http' needs learn.relevance.url")
        return HttpRelevance(url, timeout_s, catalog)
    raise ValueError(f"unknown relevance source {source!r} (catalog, table or http)")
