"""Calibrated posterior CTR (paper §3.4.1, R_CTR), one pure formula shared by the join and the learner.

Hierarchical Beta smoothing with exponentially decayed counts:

    p_global = (C_g  + m_g  * prior_ctr) / (N_g  + m_g)
    p_item   = (C_i  + m_i  * p_global)  / (N_i  + m_i)
    p_qi     = (C_qi + m_qi * p_item)    / (N_qi + m_qi)
    ctr      = clip(p_qi, clip_eps, 1 - clip_eps)          # the paper's "clipped to (0, 1)"

C and N are click and impression counts for the (query, item) pair, the item, and all traffic;
each observation made at event time t_obs weighs 2^-((t - t_obs) / half_life) at time t. An
impression is one impressed item in a finalised request; a click is that item's `clicked` flag.
Counts come only from requests finalised *before* the one being scored, so a request's own click
never leaks into its own CTR.

Decay without touching every entry: observations are stored scaled by w(t_obs) = 2^((t_obs - t_ref)
/ half_life), and a read divides by w(t_now). When the scale grows past 2^256 the table is rebased
(every entry multiplied once), which keeps the floats far from overflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_REBASE_EXP = 256.0


@dataclass(frozen=True, slots=True)
class CtrPrior:
    prior_ctr: float = 0.05
    global_strength: float = 100.0
    item_strength: float = 20.0
    query_item_strength: float = 10.0
    half_life_s: float = 3 * 86400.0
    clip_eps: float = 1e-3


def prior_from(c: object) -> CtrPrior:
    """The prior of a `configs.schema.CtrConfig` (duck-typed: `rewards` reads no config module), so
    the join and the learner score CTR from one source."""
    return CtrPrior(
        *(
            float(getattr(c, n))
            for n in (
                "prior_ctr",
                "global_strength",
                "item_strength",
                "query_item_strength",
                "half_life_s",
                "clip_eps",
            )
        )
    )


def posterior_ctr(
    c_qi: float, n_qi: float, c_i: float, n_i: float, c_g: float, n_g: float, prior: CtrPrior
) -> float:
    """The formula above on already-decayed counts. Pure; the learner calls it too."""
    p_global = (c_g + prior.global_strength * prior.prior_ctr) / (n_g + prior.global_strength)
    p_item = (c_i + prior.item_strength * p_global) / (n_i + prior.item_strength)
    p_qi = (c_qi + prior.query_item_strength * p_item) / (n_qi + prior.query_item_strength)
    return min(max(p_qi, prior.clip_eps), 1.0 - prior.clip_eps)


class _Counts:
    """Decayed [clicks, impressions] per key: numpy columns, and a dict from key to row."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.c = np.zeros(1024)
        self.n = np.zeros(1024)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> tuple[float, float]:
        row = self.index.get(key)
        return (0.0, 0.0) if row is None else (float(self.c[row]), float(self.n[row]))

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row of each key, adding new keys with zero counts."""
        index = self.index
        rows = [index.get(k, -1) for k in keys]
        if -1 in rows:
            for i, key in enumerate(keys):
                if rows[i] < 0:
                    rows[i] = index[key] = len(index)
            if len(index) > len(self.c):
                size = max(len(index), 2 * len(self.c))
                self.c = np.concatenate([self.c, np.zeros(size - len(self.c))])
                self.n = np.concatenate([self.n, np.zeros(size - len(self.n))])
        return np.asarray(rows, dtype=np.int64)

    def add(self, key: str, clicks: float, impressions: float) -> None:
        row = int(self.rows([key])[0])
        self.c[row] += clicks
        self.n[row] += impressions

    def scale(self, factor: float) -> None:
        self.c *= factor
        self.n *= factor

    def keep_strongest(self, keep: int) -> None:
        """Keep the `keep` keys with the most decayed impressions."""
        live = len(self.index)
        if live <= keep:
            return
        order = np.argsort(-self.n[:live], kind="stable")[:keep]
        keys = list(self.index)
        self.index = {keys[r]: i for i, r in enumerate(order.tolist())}
        self.c = np.concatenate([self.c[order], np.zeros(len(order))])
        self.n = np.concatenate([self.n[order], np.zeros(len(order))])


def _grouped_exclusive_cumsum(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each position, the sum of `values` at earlier positions with the same code."""
    order = np.argsort(codes, kind="stable")
    v = values[order]
    c = codes[order]
    csum = np.cumsum(v) - v  # exclusive running sum over the sorted order
    starts = np.ones(len(c), dtype=bool)
    starts[1:] = c[1:] != c[:-1]
    group_base = np.maximum.accumulate(np.where(starts, np.arange(len(c)), 0))
    out = np.empty_like(values)
    out[order] = csum - csum[group_base]
    return out


class CtrTable:
    """Decayed click/impression counts per (query, item), per item and global.

    Two ways in: `score` / `observe` per request (the readable reference), and
    `score_then_observe_batch`, which does the same for many requests at once with numpy (the
    joiner's hot path) — each request still sees only the requests before it in the batch.
    """

    def __init__(self, prior: CtrPrior, max_entries: int = 2_000_000) -> None:
        self.prior = prior
        self.max_entries = max_entries
        self._t_ref_ms: int | None = None
        self._now_ms = 0
        self._scale_now = 1.0
        self._global = [0.0, 0.0]  # [clicks, impressions], scaled
        self._items = _Counts()
        self._pairs = _Counts()  # key f"{query}\x1f{item}"

    def __len__(self) -> int:
        return len(self._pairs)

    def _half_life_ms(self) -> float:
        return self.prior.half_life_s * 1000.0

    # -- persistence (the learner's checkpoint carries its table) ------------------------------
    def state(self) -> tuple[dict[str, float | None], dict[str, tuple[list[str], np.ndarray, np.ndarray]]]:
        """(clock and global counts, {"items"|"pairs": (keys, clicks, impressions)}), counts as stored
        (scaled to the table's reference time), so `load_state` restores the table exactly."""
        clock: dict[str, float | None] = {
            "t_ref_ms": self._t_ref_ms,
            "now_ms": self._now_ms,
            "scale_now": self._scale_now,
            "global_clicks": self._global[0],
            "global_impressions": self._global[1],
        }
        counts = {}
        for name, table in (("items", self._items), ("pairs", self._pairs)):
            live = len(table.index)
            counts[name] = (list(table.index), table.c[:live].copy(), table.n[:live].copy())
        return clock, counts

    def load_state(
        self, clock: dict[str, float | None], counts: dict[str, tuple[list[str], np.ndarray, np.ndarray]]
    ) -> None:
        t_ref = clock["t_ref_ms"]
        self._t_ref_ms = None if t_ref is None else int(t_ref)
        self._now_ms = int(clock["now_ms"] or 0)
        self._scale_now = float(clock["scale_now"] or 1.0)
        self._global = [float(clock["global_clicks"] or 0.0), float(clock["global_impressions"] or 0.0)]
        for name, target in (("items", self._items), ("pairs", self._pairs)):
            keys, c, n = counts[name]
            if not (len(keys) == len(c) == len(n)):
                raise ValueError(f"CTR state {name}: {len(keys)} keys, {len(c)} clicks, {len(n)} impressions")
            target.index = {k: i for i, k in enumerate(keys)}
            size = max(len(keys), 1024)
            target.c = np.zeros(size)
            target.n = np.zeros(size)
            target.c[: len(keys)] = c
            target.n[: len(keys)] = n

    def _scale(self, ts_ms: int) -> float:
        if self._t_ref_ms is None:
            self._t_ref_ms = ts_ms
        exp = (ts_ms - self._t_ref_ms) / self._half_life_ms()
        if exp > _REBASE_EXP:
            self._rebase(ts_ms)
            exp = 0.0
        return float(2.0**exp)

    def _rebase(self, ts_ms: int) -> None:
        assert self._t_ref_ms is not None
        factor = 2.0 ** (-(ts_ms - self._t_ref_ms) / self._half_life_ms())
        self._global = [self._global[0] * factor, self._global[1] * factor]
        self._items.scale(factor)
        self._pairs.scale(factor)
        self._t_ref_ms = ts_ms
        self._scale_now = 2.0 ** ((self._now_ms - ts_ms) / self._half_life_ms())

    def _advance(self, ts_ms: int) -> None:
        if ts_ms > self._now_ms or self._t_ref_ms is None:
            self._now_ms = max(ts_ms, self._now_ms)
            self._scale_now = self._scale(self._now_ms)

    def score(self, query: str, item_ids: Sequence[str], ts_ms: int) -> list[float]:
        """Posterior CTR of each item for `query`, as of event time `ts_ms` (reads only)."""
        self._advance(ts_ms)
        inv = 1.0 / self._scale_now
        g = self._global
        out = []
        for item_id in item_ids:
            ci = self._items.get(item_id)
            cqi = self._pairs.get(f"{query}\x1f{item_id}")
            out.append(
                posterior_ctr(
                    cqi[0] * inv, cqi[1] * inv, ci[0] * inv, ci[1] * inv, g[0] * inv, g[1] * inv, self.prior
                )
            )
        return out

    def observe(self, query: str, item_ids: Sequence[str], clicked: Sequence[bool], ts_ms: int) -> None:
        """Count one finalised request: every impressed item, and whether it was clicked."""
        self._advance(ts_ms)
        w = self._scale(ts_ms)
        for item_id, was_clicked in zip(item_ids, clicked, strict=True):
            click = w if was_clicked else 0.0
            self._global[0] += click
            self._global[1] += w
            self._items.add(item_id, click, w)
            self._pairs.add(f"{query}\x1f{item_id}", click, w)
        if len(self._pairs) > self.max_entries:
            self._prune()

    def score_then_observe_batch(
        self,
        queries: Sequence[str],
        item_ids: Sequence[str],
        clicked: Sequence[bool],
        lengths: Sequence[int],
        ts_ms: Sequence[int],
    ) -> np.ndarray:
        """For requests in finalisation order (request r owns `lengths[r]` consecutive entries of
        the flat `item_ids` / `clicked`): each item's CTR as `score` gives it just before request r
        is counted, then every request counted — equal to calling score then observe per request.
        """
        n_req = len(lengths)
        if n_req == 0:
            return np.zeros(0)
        lens = np.asarray(lengths, dtype=np.int64)
        ts = np.asarray(ts_ms, dtype=np.float64)
        if self._t_ref_ms is None:
            self._t_ref_ms = int(ts[0])
            self._now_ms = int(ts[0])
        now = np.maximum.accumulate(np.maximum(ts, self._now_ms))  # the read clock of request r
        if (now[-1] - self._t_ref_ms) / self._half_life_ms() > _REBASE_EXP:
            self._rebase(int(now[-1]))
        hl = self._half_life_ms()
        inv_r = np.exp2(-(now - self._t_ref_ms) / hl)  # 1 / scale(now_r)
        w_r = np.exp2((ts - self._t_ref_ms) / hl)  # weight of request r's observations
        req = np.repeat(np.arange(n_req), lens)  # request index of every flat entry
        w = w_r[req]
        inv = inv_r[req]
        dc = np.asarray(clicked, dtype=np.float64) * w

        # global counts before request r: the table's plus every earlier request's in the batch
        gc_r = np.bincount(req, weights=dc, minlength=n_req)
        gn_r = lens * w_r
        g_c = (self._global[0] + np.cumsum(gc_r) - gc_r)[req]
        g_n = (self._global[1] + np.cumsum(gn_r) - gn_r)[req]

        ids = pa.array(item_ids, pa.string())
        pair_keys = pc.binary_join_element_wise(
            pa.array(np.repeat(np.asarray(queries, dtype=object), lens), pa.string()), ids, "\x1f"
        )
        i_c, i_n, i_codes, i_rows = self._group_before(self._items, ids, dc, w)
        q_c, q_n, q_codes, q_rows = self._group_before(self._pairs, pair_keys, dc, w)

        pr = self.prior
        p_g = (g_c * inv + pr.global_strength * pr.prior_ctr) / (g_n * inv + pr.global_strength)
        p_i = (i_c * inv + pr.item_strength * p_g) / (i_n * inv + pr.item_strength)
        p = (q_c * inv + pr.query_item_strength * p_i) / (q_n * inv + pr.query_item_strength)
        out = np.clip(p, pr.clip_eps, 1.0 - pr.clip_eps)

        self._global[0] += float(gc_r.sum())
        self._global[1] += float(gn_r.sum())
        self._add_back(self._items, i_rows, i_codes, dc, w)
        self._add_back(self._pairs, q_rows, q_codes, dc, w)
        self._now_ms = int(now[-1])
        self._scale_now = float(2.0 ** ((self._now_ms - self._t_ref_ms) / hl))
        if len(self._pairs) > self.max_entries:
            self._prune()
        return out

    @staticmethod
    def _group_before(
        table: _Counts, keys: pa.Array, dc: np.ndarray, w: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Counts of each entry's key before it: the table's plus earlier entries of the batch."""
        enc = keys.dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        rows = table.rows(enc.dictionary.to_pylist())  # one row per distinct key of the batch
        c = table.c[rows][codes] + _grouped_exclusive_cumsum(codes, dc)
        n = table.n[rows][codes] + _grouped_exclusive_cumsum(codes, w)
        return c, n, codes, rows

    @staticmethod
    def _add_back(table: _Counts, rows: np.ndarray, codes: np.ndarray, dc: np.ndarray, w: np.ndarray) -> None:
        table.c[rows] += np.bincount(codes, weights=dc, minlength=len(rows))
        table.n[rows] += np.bincount(codes, weights=w, minlength=len(rows))

    def _prune(self) -> None:
        """Drop the weakest (query, item) pairs (fewest decayed impressions) down to 80 %."""
        self._pairs.keep_strongest(int(self.max_entries * 0.8))
