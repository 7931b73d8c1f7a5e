"""The streaming learner's /metrics series and /healthz summary (docs/operations.md lists them)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from streamrl.checkpoints.serving import ServingError
from streamrl.stream.records import SKIPPED_BATCHES

if TYPE_CHECKING:
    from streamrl.rl.streaming import StreamingLearner


def publish(sl: StreamingLearner, force: bool = False) -> None:
    """Refresh the learner's /metrics and /healthz snapshot (at most every metrics.publish_s)."""
    now = time.monotonic()
    if not force and now - sl.last_publish < sl.cfg.metrics.publish_s:
        return
    sl.last_publish = now
    sl.rate_window.append((now, sl.rollouts))
    t0, r0 = sl.rate_window[0]
    rate = (sl.rollouts - r0) / (now - t0) if now > t0 else 0.0
    try:  # policy.json, a folder listing and the history's tail: cheap every second
        served, last_push, pinned = (
            sl.serving.served(),
            sl.serving.last_of("push"),
            sl.serving.held(),
        )
    except (ServingError, OSError, ValueError):
        served, last_push, pinned = None, None, None
    push_ts = _epoch(last_push["at"]) if last_push else 0.0
    m = sl.last_metrics
    values: dict[str, tuple[str, Any]] = {
        "streamrl_learner_steps_total": ("Optimiser steps taken", float(sl.learner.steps)),
        "streamrl_learner_skipped_steps_total": (
            "Steps skipped for non-finite loss or rewards",
            float(sl.learner.skipped),
        ),
        "streamrl_learner_refused_records_total": (
            "Records refused by the learner (dead-lettered), by reason",
            {(("reason", k),): float(v) for k, v in sorted(sl.refused.items())},
        ),
        "streamrl_learner_bad_reward_messages_total": (
            "Rewards-topic messages skipped as not streamrl v1 record batches (logged)",
            float(SKIPPED_BATCHES["learner"] + SKIPPED_BATCHES["learner priming"]),
        ),
        "streamrl_learner_records_in_total": (
            "Reward records read (each request once)",
            float(sl.records_in),
        ),
        "streamrl_learner_rollouts_per_second": ("Rollouts per second, recent", rate),
        "streamrl_learner_buffer_records": ("Prompts in the sampling buffer", float(len(sl.buffer))),
        "streamrl_learner_catalog_items": (
            "Items in the learner's codebook",
            float(len(sl.learner.book.sids)),
        ),
        "streamrl_learner_new_items_total": (
            "Items from the items topic given SIDs while running",
            float(sl.catalog.added if sl.catalog else 0),
        ),
        "streamrl_learner_refused_items_total": (
            "New items refused: their SID prefix is full (rebuild with more unique levels)",
            float(sl.catalog.refused if sl.catalog else 0),
        ),
        "streamrl_learner_idle_seconds_total": (
            "Time the loop waited with fewer than B fresh prompts (learn.max_reuse reached)",
            sl.idle_s,
        ),
        "streamrl_learner_reuse_factor": (
            "Samples per distinct record trained on since start (1: each once; at most learn.max_reuse)",
            sl.buffer.reuse_factor,
        ),
        "streamrl_learner_heldout_records": (
            "Held-out records kept for the push gate",
            float(len(sl.heldout)),
        ),
        "streamrl_learner_weights_version": (
            "Reward weights version in force",
            float(sl.learner.policy.version),
        ),
        "streamrl_learner_served_version": ("Version serving follows now (0: none)", float(served or 0)),
        "streamrl_learner_serving_pinned": (
            "1 while serving is pinned by a rollback",
            float(bool(pinned)),
        ),
        "streamrl_learner_last_push_timestamp_seconds": ("Unix time of the last push (0: none)", push_ts),
        "streamrl_learner_pushes_total": (
            "Scheduled pushes by result: pushed, refused (by the gate or a check), held (pinned), "
            "skipped (nothing new), error",
            {
                (("result", k),): float(sl.push_outcomes[k])
                for k in ("pushed", "refused", "held", "skipped", "error")
            },
        ),
        "streamrl_learner_reward": (
            "Mean reward component of the last step's real-item rollouts",
            {
                (("component", c), ("kind", kind)): float(m.get(f"reward_{c}{suffix}", 0.0))
                for c in ("co", "ctr", "rel")
                for kind, suffix in (("unweighted", ""), ("weighted", "_weighted"))
            },
        ),
    }
    for key, name, doc in (
        ("loss", "streamrl_learner_loss", "Loss of the last step"),
        ("grad_norm", "streamrl_learner_grad_norm", "Gradient norm before clipping, last step"),
        ("adv_mean", "streamrl_learner_advantage_mean", "Mean advantage, last step"),
        ("adv_std", "streamrl_learner_advantage_std", "Advantage standard deviation, last step"),
        ("adv_abs_max", "streamrl_learner_advantage_abs_max", "Largest |advantage|, last step"),
        ("reward_mean", "streamrl_learner_reward_mean", "Mean item reward of the last step's rollouts"),
        ("valid_sid_rate", "streamrl_learner_valid_sid_rate", "Share of rollouts that are real items"),
        ("promoted_share", "streamrl_learner_promoted_share", "Share of rollouts that hit a promotion"),
        ("entropy", "streamrl_learner_rollout_entropy", "Mean per-token entropy of the rollouts, nats"),
        ("distinct_sids", "streamrl_learner_distinct_sid_share", "Distinct SIDs / rollouts, last step"),
        ("kl", "streamrl_learner_kl", "KL(policy || reference) estimate, last step"),
        ("sft_nll", "streamrl_learner_sft_nll", "Per-token NLL of the SFT term, last step"),
    ):
        if key in m:
            values[name] = (doc, float(m[key]))
    sl.metrics.publish(
        values,
        {
            "ok": sl.last_error is None,
            "step": sl.learner.steps,
            "weights_version": sl.learner.policy.version,
            "served_version": served,
            "pinned": pinned,
            "last_push": last_push,
            "buffer": len(sl.buffer),
            "idle_s": round(sl.idle_s, 1),
            "reuse_factor": round(sl.buffer.reuse_factor, 2),
            "rollouts_per_s": round(rate, 1),
            "last_error": sl.last_error,
            "warm_start": sl.warm or None,
            **{k: m[k] for k in ("loss", "reward_mean", "reward_co", "reward_ctr", "reward_rel") if k in m},
        },
    )


def _epoch(iso: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
