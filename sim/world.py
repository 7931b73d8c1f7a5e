"""The simulated search world: catalog, users, queries and a ground-truth relevance tier.

Built entirely from `WorldConfig.seed` (numpy Generator), so the same config gives the same world.

Relevance tier of (query, item), from category and attribute agreement (`tier`):
  3 exact      the item is in the query's category (its leaf, or anywhere under it for a query that
               names only a top or mid category) and has every attribute the query names, and not the
               one it negates;
  2 related    same mid category, or the right leaf with one named attribute wrong;
  1 mismatch   same top category (or the right leaf with the negated attribute / several wrong);
  0 irrelevant otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

ATTRS = ("brand", "colour", "material", "style", "audience")
TOP_NAMES = ["apparel", "shoes", "home", "sports", "beauty", "electronics", "toys", "garden"]
MID_NAMES = ["basics", "outerwear", "knitwear", "accessories", "premium", "outdoor", "kitchen", "care"]
LEAF_NAMES = ["tops", "bottoms", "sets", "bags", "gloves", "hats", "boots", "lamps", "mugs"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogConfig(_Section):
    items: int = Field(3000, ge=10)  # catalog size
    category_fanout: tuple[int, int, int] = (6, 4, 3)  # children per level (top, mid, leaf)
    merchants: int = Field(150, ge=1)
    new_merchant_share: float = Field(0.15, ge=0, le=1)  # flagged "new" (emerging merchants)
    attributes: dict[str, int | list[str]] = Field(default_factory=dict)  # values, or a count
    popularity_zipf: float = Field(1.1, ge=0)


class UsersConfig(_Section):
    count: int = Field(2000, ge=1)
    activity_zipf: float = Field(1.0, ge=0)
    preferred_categories: int = Field(2, ge=1)
    preference_strength: float = Field(0.6, ge=0, le=1)


class QueriesConfig(_Section):
    count: int = Field(400, ge=1)
    frequency_zipf: float = Field(1.0, ge=0)
    attributes_per_query: tuple[int, int] = (0, 3)
    negated_share: float = Field(0.1, ge=0, le=1)
    underspecified_share: float = Field(0.15, ge=0, le=1)


class RankerConfig(_Section):
    relevance: float = 1.0
    popularity: float = 0.4
    noise: float = Field(0.8, ge=0)


class BehaviourConfig(_Section):
    requests_per_s: float = Field(20.0, gt=0)
    page_size: int = Field(10, ge=1)
    ranker: RankerConfig = RankerConfig()
    click_by_tier: tuple[float, float, float, float] = (0.02, 0.08, 0.25, 0.55)
    preference_boost: float = Field(0.5, ge=0)
    order_given_click: tuple[float, float, float, float] = (0.0, 0.02, 0.06, 0.15)
    click_delay_s: tuple[float, float] = (1.0, 60.0)
    disorder_s: float = Field(10.0, ge=0)
    delay_scale: float = Field(1.0, gt=0)  # multiplies click and order delays (the demo compresses time)
    duplicate_rate: float = Field(0.002, ge=0, le=1)
    heldout_share: float = Field(0.05, ge=0, lt=1)


class WorldConfig(_Section):
    seed: int = 7
    catalog: CatalogConfig = CatalogConfig()
    users: UsersConfig = UsersConfig()
    queries: QueriesConfig = QueriesConfig()
    behaviour: BehaviourConfig = BehaviourConfig()
    source: str = "synthetic"  # "synthetic" or "esci" (sim/esci.py)
    esci_dir: str | None = None  # ESCI fixture folder, default ../shared/data/esci


def load_world_config(path: str | Path, seed: int | None = None) -> WorldConfig:
    tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if seed is not None:
        tree["seed"] = seed
    return WorldConfig.model_validate(tree)


@dataclass
class Item:
    item_id: str
    title: str
    category: tuple[str, str, str]
    attrs: dict[str, str]
    merchant_id: str
    popularity: float


@dataclass
class Query:
    text: str
    category: tuple[str, ...]  # 1, 2 or 3 levels: the intent
    attrs: dict[str, str]
    negated: tuple[str, str] | None  # (attribute, value) the query excludes
    weight: float


@dataclass
class User:
    user_id: str
    favoured: tuple[str, ...]  # top-level categories
    liked: dict[str, str]  # a preferred value per attribute (brand, colour)
    weight: float


@dataclass
class World:
    cfg: WorldConfig
    items: list[Item]
    queries: list[Query]
    users: list[User]
    new_merchants: set[str]
    by_top: dict[str, list[int]] = field(default_factory=dict)
    tier_override: dict[tuple[str, str], int] = field(default_factory=dict)  # real judgments
    default_tier: int | None = None  # for worlds of judgments: the tier of an unjudged pair
    pools: dict[str, list[int]] = field(default_factory=dict)  # query -> candidate item indices

    def tier(self, q: Query, it: Item) -> int:
        override = self.tier_override.get((q.text, it.item_id))
        if override is not None:
            return override
        if self.default_tier is not None:
            return self.default_tier
        return relevance_tier(q, it)


def relevance_tier(q: Query, it: Item) -> int:
    depth = len(q.category)
    in_scope = it.category[:depth] == q.category
    if in_scope:
        if q.negated and it.attrs.get(q.negated[0]) == q.negated[1]:
            return 1
        wrong = sum(1 for a, v in q.attrs.items() if it.attrs.get(a) != v)
        return 3 if wrong == 0 else 2 if wrong == 1 else 1
    if it.category[:2] == q.category[:2]:
        return 2
    if it.category[0] == q.category[0]:
        return 1
    return 0


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _attribute_values(cfg: CatalogConfig) -> dict[str, list[str]]:
    spec: dict[str, int | list[str]] = {
        "brand": 40,
        "colour": ["black", "white", "red", "blue"],
        "material": ["cotton", "wool"],
        "style": ["casual", "classic"],
        "audience": ["women", "men"],
        **cfg.attributes,
    }
    out = {}
    for name in ATTRS:
        v = spec[name]
        out[name] = [f"{name}{i:02d}" for i in range(v)] if isinstance(v, int) else list(v)
    return out


def build_world(cfg: WorldConfig) -> World:
    if cfg.source == "esci":
        from streamrl.sim.esci import build_esci_world

        return build_esci_world(cfg)
    rng = np.random.default_rng(cfg.seed)
    c = cfg.catalog
    values = _attribute_values(c)
    f1, f2, f3 = c.category_fanout
    leaves = [
        (
            TOP_NAMES[a % len(TOP_NAMES)] + (f"{a}" if a >= len(TOP_NAMES) else ""),
            MID_NAMES[(a + b) % len(MID_NAMES)] + f"-{b}",
            LEAF_NAMES[(a + b + c3) % len(LEAF_NAMES)] + f"-{c3}",
        )
        for a in range(f1)
        for b in range(f2)
        for c3 in range(f3)
    ]
    merchants = [f"m{i:04d}" for i in range(c.merchants)]
    new_merchants = {m for m in merchants if rng.random() < c.new_merchant_share}
    pop = _zipf_weights(c.items, c.popularity_zipf)[rng.permutation(c.items)]
    items = []
    for i in range(c.items):
        leaf = leaves[int(rng.integers(len(leaves)))]
        attrs = {a: values[a][int(rng.integers(len(values[a])))] for a in ATTRS}
        title = (
            f"{attrs['brand']} {attrs['colour']} {attrs['material']} {attrs['style']} "
            f"{leaf[2].split('-')[0]} for {attrs['audience']}"
        )
        items.append(
            Item(
                f"it{i:06d}", title, leaf, attrs, merchants[int(rng.integers(len(merchants)))], float(pop[i])
            )
        )
    by_top: dict[str, list[int]] = {}
    for idx, it in enumerate(items):
        by_top.setdefault(it.category[0], []).append(idx)
    queries = _build_queries(cfg.queries, rng, items, values)
    users = _build_users(cfg.users, rng, sorted(by_top), values)
    return World(cfg, items, queries, users, new_merchants, by_top)


def _build_queries(
    qc: QueriesConfig, rng: np.random.Generator, items: list[Item], values: dict[str, list[str]]
) -> list[Query]:
    weights = _zipf_weights(qc.count, qc.frequency_zipf)
    out: list[Query] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < qc.count and tries < qc.count * 50:
        tries += 1
        anchor = items[int(rng.integers(len(items)))]  # queries aim at things that exist
        if rng.random() < qc.underspecified_share:
            depth = int(rng.integers(1, 3))
            cat = anchor.category[:depth]
            attrs: dict[str, str] = {}
        else:
            cat = anchor.category
            k = int(rng.integers(qc.attributes_per_query[0], qc.attributes_per_query[1] + 1))
            names = [str(a) for a in rng.choice(ATTRS, size=k, replace=False)] if k else []
            attrs = {a: anchor.attrs[a] for a in names}
        negated = None
        if len(cat) == 3 and rng.random() < qc.negated_share:
            a = str(rng.choice([x for x in ATTRS if x not in attrs]))
            negated = (a, str(rng.choice([v for v in values[a] if v != anchor.attrs[a]])))
        noun = cat[-1].split("-")[0]
        words = [attrs[a] for a in ("colour", "material", "brand", "style") if a in attrs] + [noun]
        if "audience" in attrs:
            words += ["for", attrs["audience"]]
        text = " ".join(words) + (f", no {negated[1]}" if negated else "")
        if text in seen:
            continue
        seen.add(text)
        out.append(Query(text, cat, attrs, negated, float(weights[len(out)])))
    return out


def _build_users(
    uc: UsersConfig, rng: np.random.Generator, tops: list[str], values: dict[str, list[str]]
) -> list[User]:
    weights = _zipf_weights(uc.count, uc.activity_zipf)[rng.permutation(uc.count)]
    users = []
    for i in range(uc.count):
        k = min(uc.preferred_categories, len(tops))
        favoured = tuple(str(t) for t in rng.choice(tops, size=k, replace=False))
        liked = {a: str(rng.choice(values[a])) for a in ("brand", "colour")}
        users.append(User(f"u{i:05d}", favoured, liked, float(weights[i])))
    return users
