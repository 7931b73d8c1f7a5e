"""A world from real relevance data: the ESCI shopping queries and their human judgments.

Source: ../shared/data/esci (Shopping Queries Dataset, Reddy et al. 2022, arXiv 2206.06588, via the
OpenSearch search-relevance sample data; Apache-2.0): 150 real Amazon US queries and 6,678 judgments
query → ASIN → Exact / Substitute / Complement / Irrelevant, which become tiers 3 / 2 / 1 / 0. Without
../shared, the 40-query sample shipped in sim/data/esci (same licence and attribution) is used.

Items are the judged ASINs. ESCI ships no titles or categories, so an item's text is derived from
the queries that judged it: its title is the query it is Exact for (the first such, in file order),
else the query it was judged Substitute/Complement/Irrelevant for, prefixed "related to"; its
category path is ("esci", <first word of that query>, <that query>). Merchants are synthetic (a stable
hash of the ASIN). A judged (query, item) pair gets the judged tier; an unjudged pair tier 0 (ESCI
judged each query's candidate set). Users and behaviour are simulated as in any world.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from streamrl.sim.world import Item, Query, User, World, WorldConfig, _zipf_weights

log = logging.getLogger("streamrl.sim.esci")
RATING_TIER = {"100.000": 3, "10.000": 2, "1.000": 1, "0.000": 0}


SAMPLE = Path(__file__).parent / "data" / "esci"  # 40 queries, shipped in the package (data/README.md)


def esci_dir(cfg: WorldConfig) -> Path:
    """`esci_dir` from the world file, else the full fixture in $STREAMRL_SHARED or ../shared beside
    the checkout, else the sample shipped with streamrl."""
    if cfg.esci_dir:
        return Path(cfg.esci_dir)
    shared = os.environ.get("STREAMRL_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    full = root / "data" / "esci"
    if (full / "esci_us_judgments.json").exists():
        return full
    log.info("ESCI: %s not found; using the 40-query sample shipped in %s", full, SAMPLE)
    return SAMPLE


def load_judgments(folder: Path) -> dict[str, dict[str, int]]:
    """query → {asin: tier}, in file order."""
    doc = json.loads((folder / "esci_us_judgments.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, int]] = {}
    for entry in doc["judgmentRatings"]:
        tiers = out.setdefault(entry["query"], {})
        for r in entry["ratings"]:
            tiers[r["docId"]] = RATING_TIER[r["rating"]]
    return out


def build_esci_world(cfg: WorldConfig) -> World:
    rng = np.random.default_rng(cfg.seed)
    judged = load_judgments(esci_dir(cfg))
    title: dict[str, str] = {}
    for query, tiers in judged.items():  # Exact first, in file order
        for asin, tier in tiers.items():
            if tier == 3 and asin not in title:
                title[asin] = query
    for query, tiers in judged.items():
        for asin in tiers:
            title.setdefault(asin, f"related to {query}")
    asins = sorted(title)
    pop = _zipf_weights(len(asins), cfg.catalog.popularity_zipf)[rng.permutation(len(asins))]
    merchants = [f"m{i:04d}" for i in range(cfg.catalog.merchants)]
    new_merchants = {m for m in merchants if rng.random() < cfg.catalog.new_merchant_share}
    items = []
    for i, asin in enumerate(asins):
        base = title[asin].removeprefix("related to ")
        digest = int(hashlib.sha256(asin.encode()).hexdigest()[:8], 16)
        items.append(
            Item(
                asin,
                title[asin],
                ("esci", base.split()[0], base),
                {},
                merchants[digest % len(merchants)],
                float(pop[i]),
            )
        )
    qnames = list(judged)
    weights = _zipf_weights(len(qnames), cfg.queries.frequency_zipf)[rng.permutation(len(qnames))]
    queries = [
        Query(q, ("esci", q.split()[0], q), {}, None, float(w)) for q, w in zip(qnames, weights, strict=True)
    ]
    uw = _zipf_weights(cfg.users.count, cfg.users.activity_zipf)[rng.permutation(cfg.users.count)]
    users = [User(f"u{i:05d}", ("esci",), {}, float(uw[i])) for i in range(cfg.users.count)]
    index = {asin: i for i, asin in enumerate(asins)}
    world = World(cfg, items, queries, users, new_merchants, {"esci": list(range(len(items)))})
    world.tier_override = {(q, a): t for q, tiers in judged.items() for a, t in tiers.items()}
    world.default_tier = 0
    world.pools = {q: sorted(index[a] for a in tiers) for q, tiers in judged.items()}
    return world
