"""Calls into transformers that changed between the versions streamrl supports (4.45 through 5.x).

The KV-cache argument of a causal LM's forward is `cache` in recent 5.x releases (`past_key_values`
is deprecated there and removed in 5.40) and `past_key_values` before; the "only the last
position's logits" argument is `logits_to_keep` (4.50+) or `num_logits_to_keep` (4.45). The names
are read once per model class from its forward signature, so no deprecated argument is ever passed.
"""

from __future__ import annotations

import inspect
from functools import cache as memoize
from typing import Any

import torch


@memoize
def _forward_args(cls: Any) -> tuple[str, str | None]:
    params = inspect.signature(cls.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache_arg, keep


def cached_forward(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    past: Any = None,
    last: bool = False,
) -> tuple[torch.Tensor, Any]:
    """(logits, cache) of one forward with a KV cache, under whichever argument name this transformers
    takes; `last=True` computes only the last position's logits ([R, 1, V])."""
    cache_arg, keep = _forward_args(model.__class__)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    kwargs["use_cache"] = True
    if past is not None:
        kwargs[cache_arg] = past
    if last and keep is not None:
        kwargs[keep] = 1
    out = model(**kwargs)
    new = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return out.logits, new


def select_rows(past: Any, rows: torch.Tensor) -> Any:
    """The cache with its batch rows picked (and repeated) by `rows`."""
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(rows)
        return past
    return tuple(tuple(t[rows] for t in layer) for layer in past)  # legacy tuple caches
