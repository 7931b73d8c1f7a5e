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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_REBASE_EXP = 256.0
_EMPTY: dict[str, list[float]] = {}


@dataclass(frozen=True, slots=True)
class CtrPrior:
    prior_ctr: float = 0.05
    global_strength: float = 100.0
    item_strength: float = 20.0
    query_item_strength: float = 10.0
    half_life_s: float = 3 * 86400.0
    clip_eps: float = 1e-3


def posterior_ctr(
    c_qi: float, n_qi: float, c_i: float, n_i: float, c_g: float, n_g: float, prior: CtrPrior
) -> float:
    """The formula above on already-decayed counts. Pure; the learner calls it too."""
    p_global = (c_g + prior.global_strength * prior.prior_ctr) / (n_g + prior.global_strength)
    p_item = (c_i + prior.item_strength * p_global) / (n_i + prior.item_strength)
    p_qi = (c_qi + prior.query_item_strength * p_item) / (n_qi + prior.query_item_strength)
    return min(max(p_qi, prior.clip_eps), 1.0 - prior.clip_eps)


class CtrTable:
    """Decayed click/impression counts per (query, item), per item and global."""

    def __init__(self, prior: CtrPrior, max_entries: int = 2_000_000) -> None:
        self.prior = prior
        self.max_entries = max_entries
        self._t_ref_ms: int | None = None
        self._now_ms = 0
        self._scale_now = 1.0
        self._global = [0.0, 0.0]  # [clicks, impressions], scaled
        self._items: dict[str, list[float]] = {}
        self._pairs: dict[str, dict[str, list[float]]] = {}  # query -> item -> [c, n]
        self._n_pairs = 0

    def __len__(self) -> int:
        return self._n_pairs

    def _scale(self, ts_ms: int) -> float:
        if self._t_ref_ms is None:
            self._t_ref_ms = ts_ms
        exp = (ts_ms - self._t_ref_ms) / (self.prior.half_life_s * 1000.0)
        if exp > _REBASE_EXP:
            self._rebase(ts_ms)
            exp = 0.0
        return float(2.0**exp)

    def _rebase(self, ts_ms: int) -> None:
        assert self._t_ref_ms is not None
        factor = 2.0 ** (-(ts_ms - self._t_ref_ms) / (self.prior.half_life_s * 1000.0))
        for counts in self._iter_counts():
            counts[0] *= factor
            counts[1] *= factor
        self._t_ref_ms = ts_ms

    def _iter_counts(self) -> Iterable[list[float]]:
        yield self._global
        yield from self._items.values()
        for per_item in self._pairs.values():
            yield from per_item.values()

    def _advance(self, ts_ms: int) -> None:
        if ts_ms > self._now_ms or self._t_ref_ms is None:
            self._now_ms = max(ts_ms, self._now_ms)
            self._scale_now = self._scale(self._now_ms)

    def score(self, query: str, item_ids: Sequence[str], ts_ms: int) -> list[float]:
        """Posterior CTR of each item for `query`, as of event time `ts_ms` (reads only).

        `posterior_ctr` inlined: this runs for every impressed item of every request.
        """
        self._advance(ts_ms)
        inv = 1.0 / self._scale_now
        pr = self.prior
        m_g, m_i, m_qi = pr.global_strength, pr.item_strength, pr.query_item_strength
        lo, hi = pr.clip_eps, 1.0 - pr.clip_eps
        p_g = (self._global[0] * inv + m_g * pr.prior_ctr) / (self._global[1] * inv + m_g)
        items = self._items
        per_item = self._pairs.get(query, _EMPTY)
        zero = (0.0, 0.0)
        out = []
        for item_id in item_ids:
            ci = items.get(item_id, zero)
            cqi = per_item.get(item_id, zero)
            p_i = (ci[0] * inv + m_i * p_g) / (ci[1] * inv + m_i)
            p = (cqi[0] * inv + m_qi * p_i) / (cqi[1] * inv + m_qi)
            out.append(lo if p < lo else hi if p > hi else p)
        return out

    def observe(self, query: str, item_ids: Sequence[str], clicked: Sequence[bool], ts_ms: int) -> None:
        """Count one finalised request: every impressed item, and whether it was clicked."""
        self._advance(ts_ms)
        w = self._scale(ts_ms)
        per_item = self._pairs.get(query)
        if per_item is None:
            per_item = self._pairs[query] = {}
        items = self._items
        g = self._global
        for item_id, was_clicked in zip(item_ids, clicked, strict=True):
            click = w if was_clicked else 0.0
            g[0] += click
            g[1] += w
            ci = items.get(item_id)
            if ci is None:
                items[item_id] = [click, w]
            else:
                ci[0] += click
                ci[1] += w
            cqi = per_item.get(item_id)
            if cqi is None:
                per_item[item_id] = [click, w]
                self._n_pairs += 1
            else:
                cqi[0] += click
                cqi[1] += w
        if self._n_pairs > self.max_entries:
            self._prune()

    def score_then_observe(
        self, query: str, item_ids: Sequence[str], clicked: Sequence[bool], ts_ms: int
    ) -> list[float]:
        """`score` then `observe` in one pass over the items (the join's hot path): each item's CTR
        is read before this request is counted, so equal to `score` followed by `observe`."""
        self._advance(ts_ms)
        inv = 1.0 / self._scale_now
        w = self._scale(ts_ms)
        pr = self.prior
        m_g, m_i, m_qi = pr.global_strength, pr.item_strength, pr.query_item_strength
        lo, hi = pr.clip_eps, 1.0 - pr.clip_eps
        g = self._global
        p_g = (g[0] * inv + m_g * pr.prior_ctr) / (g[1] * inv + m_g)
        items = self._items
        per_item = self._pairs.get(query)
        if per_item is None:
            per_item = self._pairs[query] = {}
        out = []
        n_clicks = 0.0
        for item_id, was_clicked in zip(item_ids, clicked, strict=True):
            click = w if was_clicked else 0.0
            n_clicks += click
            ci = items.get(item_id)
            if ci is None:
                ci = items[item_id] = [0.0, 0.0]
            cqi = per_item.get(item_id)
            if cqi is None:
                cqi = per_item[item_id] = [0.0, 0.0]
                self._n_pairs += 1
            p_i = (ci[0] * inv + m_i * p_g) / (ci[1] * inv + m_i)
            p = (cqi[0] * inv + m_qi * p_i) / (cqi[1] * inv + m_qi)
            out.append(lo if p < lo else hi if p > hi else p)
            ci[0] += click
            ci[1] += w
            cqi[0] += click
            cqi[1] += w
        g[0] += n_clicks
        g[1] += w * len(out)
        if self._n_pairs > self.max_entries:
            self._prune()
        return out

    def _prune(self) -> None:
        """Drop the weakest (query, item) pairs (fewest decayed impressions) down to 80 %."""
        weights = sorted(c[1] for per in self._pairs.values() for c in per.values())
        cut = weights[len(weights) - int(self.max_entries * 0.8)]
        for query in list(self._pairs):
            per = self._pairs[query]
            for item_id in [k for k, c in per.items() if c[1] < cut]:
                del per[item_id]
            if not per:
                del self._pairs[query]
        self._n_pairs = sum(len(per) for per in self._pairs.values())
