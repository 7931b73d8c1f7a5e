"""A push: the newest (or a named) checkpoint through the gate into the serving layout, then an
optional notification of the server and a check that it reports the new version.

Gate (issue #5), in order; a refusal is recorded in history.jsonl with its reason and nothing is
copied:
 1. every file matches the manifest's sha256 (a truncated or edited checkpoint is never pushed);
 2. every floating-point parameter in the model's safetensors is finite;
 3. the candidate has not collapsed: its distinct top-1 SIDs over the held-out prompts number more
    than `min_distinct_top1` × the distinct queries among them (a collapsed policy names the same few
    items for any query);
 4. held-out HR@10 has not significantly regressed against the version now served, both evaluated on
    the same held-out records (the learner kept them aside, never trained on them), paired request by
    request. Evaluation is injected (`evaluate(folder) -> HeldoutScores or None`) so this package
    needs no model code. With fewer than `min_heldout` paired requests the comparison is not made (a
    `gate_note` says so). Otherwise a candidate is refused only when both hold:
      - its HR@10 is below the served version's by at least `max_regression` (the minimum effect);
      - the exact McNemar test rejects equal HR@10 at level `alpha`: of the m = b + c discordant
        requests (one model hits, the other misses), the b candidate-only hits are Binomial(m, 1/2)
        under equal HR@10; p = min(1, 2·P(X ≤ min(b, c))) (McNemar 1947, exact binomial form).
    Why McNemar: the candidate and the served version answer the same requests, so their hits are
    paired and most requests are concordant (both hit or both miss); only the discordant ones carry
    evidence of a difference. Exact and deterministic (no seed, no resampling), valid for small m,
    and needs no scipy. The unpaired "drop > max_regression" rule it replaces refused about 18 % of
    equally good candidates at 200 held-out records (issue #11); under equal HR@10 this rule refuses
    at most alpha/2 of them (one side of a two-sided test). A 95 % Wald interval of the paired difference
    (Agresti 2002 §10.1) is recorded beside it for the reader; it decides nothing.
    Candidate and served hit lists of different lengths are not paired: refused (the evaluator reads
    the records once per push, so this is a defect, never noise).
A scheduled push while serving is pinned is held (recorded as `held_push`); a push of a step that
is already the newest version is skipped without a record.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Required, TypedDict

from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import Checkpoint, CheckpointError, CheckpointStore, read_manifest, verify

log = logging.getLogger("streamrl.push")
# What `evaluate(folder)` returns (rl/gate.py::heldout_evaluator): HR@10 over the evaluated held-out
# requests, distinct top-1 SIDs per distinct query, the request and query counts, and `hits`, the 0/1
# hit@10 of each evaluated request in record order (its mean is HR@10; never written to history).
HeldoutScores = TypedDict(
    "HeldoutScores",
    {
        "hr@10": Required[float],
        "distinct_top1_share": float,
        "n": float,
        "queries": float,
        "hits": list[int],
    },
    total=False,
)
Evaluate = Callable[[Path], HeldoutScores | None]
MCNEMAR = "mcnemar_exact"
Z95 = NormalDist().inv_cdf(0.975)  # 1.95996…: two-sided 95 % normal quantile


@dataclass
class PushResult:
    pushed: bool
    reason: str
    version: int | None = None
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notified: bool | None = None
    # pushed | refused (the gate or a check said no) | held (serving pinned) | skipped (nothing new)
    outcome: str = "skipped"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def nonfinite_parameters(folder: Path) -> list[str]:
    """Names of floating-point tensors in the folder's *.safetensors with a NaN or an infinity."""
    import torch
    from safetensors import safe_open

    bad = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                t = st.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"{f.name}:{name}")
    return bad


def push(
    store: CheckpointStore,
    serving: ServingRoot,
    *,
    step: int | None = None,
    evaluate: Evaluate | None = None,
    max_regression: float = 0.02,
    min_distinct_top1: float = 0.0,
    alpha: float = 0.05,
    min_heldout: int = 100,
    scheduled: bool = False,
    notify_url: str | None = None,
    verify_timeout_s: float = 10.0,
) -> PushResult:
    trigger = "scheduled" if scheduled else "manual"
    if scheduled and serving.held():
        pinned = serving.policy().get("version")
        serving.record("held_push", reason=f"serving is pinned to version {pinned}", trigger=trigger)
        return PushResult(
            False,
            f"held: serving is pinned to version {pinned} (streamrl push resume lifts it)",
            outcome="held",
        )
    ckpts = store.checkpoints()
    if step is not None:
        try:
            ckpt = store.get(step)
        except CheckpointError as exc:
            return PushResult(False, str(exc))
    elif ckpts:
        ckpt = ckpts[-1]
    else:
        return PushResult(False, "no checkpoint to push yet")
    with ExitStack() as stack:
        try:  # retention leaves a held checkpoint alone while it is evaluated and copied
            stack.enter_context(store.holding(ckpt.step))
        except CheckpointError as exc:  # deleted by retention between listing and holding it
            return PushResult(False, str(exc), step=ckpt.step)
        gate = Gate(evaluate, max_regression, min_distinct_top1, alpha, min_heldout)
        return _gate_and_copy(serving, ckpt, step, gate, trigger, notify_url, verify_timeout_s)


@dataclass(frozen=True)
class Gate:
    evaluate: Evaluate | None
    max_regression: float  # the minimum HR@10 drop refused (absolute), when significant
    min_distinct_top1: float
    alpha: float = 0.05  # the significance level of the McNemar test
    min_heldout: int = 100  # fewer paired held-out requests: HR@10 is not compared


def _gate_and_copy(
    serving: ServingRoot,
    ckpt: Checkpoint,
    step: int | None,
    gate: Gate,
    trigger: str,
    notify_url: str | None,
    verify_timeout_s: float,
) -> PushResult:
    served = serving.served()
    versions = serving.versions()
    if versions and step is None and _version_step(serving, versions[-1]) == ckpt.step:
        return PushResult(False, f"step {ckpt.step} is already version {versions[-1]}", step=ckpt.step)

    def refuse(reason: str, metrics: dict[str, Any] | None = None) -> PushResult:
        serving.record("refused_push", step=ckpt.step, reason=reason, trigger=trigger, metrics=metrics or {})
        log.error("push of step %d refused: %s", ckpt.step, reason)
        return PushResult(False, reason, step=ckpt.step, metrics=metrics or {}, outcome="refused")

    try:
        manifest = verify(ckpt.path)
    except CheckpointError as exc:
        return refuse(f"hash check failed: {exc}")
    bad = nonfinite_parameters(ckpt.path)
    if bad:
        return refuse(f"non-finite parameters: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}")
    metrics: dict[str, Any] = {}
    if gate.evaluate is not None:
        reason = _compare(serving, ckpt.path, served, gate, metrics)
        if reason:
            return refuse(reason, metrics)
    version = serving.push(
        ckpt.path, {"trigger": trigger, "metrics": {**manifest.get("metrics", {}), **metrics}}
    )
    result = PushResult(True, "pushed", version, ckpt.step, metrics, outcome="pushed")
    if notify_url:
        result.notified = notify(serving, notify_url, version, verify_timeout_s)
    log.info("pushed step %d as version %d: %s", ckpt.step, version, _gate_summary(metrics))
    return result


def _compare(
    serving: ServingRoot, path: Path, served: int | None, gate: Gate, metrics: dict[str, Any]
) -> str | None:
    """Gate steps 3 and 4 on held-out records; fills `metrics`; the reason to refuse, or None."""
    assert gate.evaluate is not None
    cand = gate.evaluate(path)
    if cand is None:
        metrics["gate_note"] = "no held-out records yet: HR@10 not compared"
        return None
    metrics["hr@10"] = cand["hr@10"]
    collapsed = _collapse(cand, gate, metrics)
    if collapsed:
        return collapsed
    if served is None:
        metrics["gate_note"] = "nothing served yet: HR@10 not compared"
        return None
    base = gate.evaluate(serving.version_path(served))
    if base is None:  # the same records as the candidate's: cannot happen with heldout_evaluator
        metrics["gate_note"] = f"version {served} not evaluated: HR@10 not compared"
        return None
    metrics["served_hr@10"] = base["hr@10"]
    metrics["served_version"] = served
    return _regression(cand, base, gate, metrics)


def _collapse(cand: HeldoutScores, gate: Gate, metrics: dict[str, Any]) -> str | None:
    """Gate step 3: distinct top-1 SIDs per distinct held-out query at or below `min_distinct_top1`."""
    share = cand.get("distinct_top1_share")
    if share is None:
        return None
    metrics["distinct_top1_share"] = share
    if gate.min_distinct_top1 and share <= gate.min_distinct_top1:
        return (
            f"collapsed: {share:.3f} distinct top-1 SIDs per distinct query over "
            f"{int(cand.get('n', 0))} held-out prompts ({int(cand.get('queries', 0))} queries), "
            f"at or below push.min_distinct_top1 {gate.min_distinct_top1}"
        )
    return None


def _regression(cand: HeldoutScores, base: HeldoutScores, gate: Gate, metrics: dict[str, Any]) -> str | None:
    """Gate step 4: a significant HR@10 drop of at least `max_regression` on enough paired requests."""
    if not math.isfinite(cand["hr@10"]):
        return f"held-out HR@10 is {cand['hr@10']}"
    hits, served_hits = cand.get("hits", []), base.get("hits", [])
    if len(hits) != len(served_hits):
        return (
            f"held-out hits are not paired: {len(hits)} candidate requests, "
            f"{len(served_hits)} for version {metrics['served_version']}"
        )
    metrics["n"] = n = len(hits)
    if n == 0 or n < gate.min_heldout:
        metrics["gate_note"] = (
            f"{n} paired held-out requests, under push.min_heldout {gate.min_heldout}: HR@10 not compared"
        )
        return None
    b, c = discordant_pairs(hits, served_hits)
    p = mcnemar_exact_p(b, c)
    lo, hi = paired_difference_ci95(b, c, n)
    metrics.update(
        {
            "hr@10_diff": (b - c) / n,
            "hr@10_diff_ci95_lo": lo,
            "hr@10_diff_ci95_hi": hi,
            "discordant": {"candidate_only": b, "served_only": c},
            "p_value": p,
            "test": MCNEMAR,
            "alpha": gate.alpha,
            "max_regression": gate.max_regression,
        }
    )
    if not significant_regression(b, c, n, p, gate):
        return None
    return (
        f"held-out HR@10 {sum(hits) / n:.4f} vs version {metrics['served_version']}'s "
        f"{sum(served_hits) / n:.4f} on {n} paired requests: a drop of {(c - b) / n:.4f}, at least "
        f"push.max_regression {gate.max_regression}, significant ({MCNEMAR} p={p:.3g} < push.alpha "
        f"{gate.alpha}; discordant {b} candidate-only vs {c} served-only hits)"
    )


def discordant_pairs(hits: Sequence[int], served_hits: Sequence[int]) -> tuple[int, int]:
    """(b, c): requests only the candidate hit, requests only the served version hit."""
    b = sum(1 for h, s in zip(hits, served_hits, strict=True) if h and not s)
    c = sum(1 for h, s in zip(hits, served_hits, strict=True) if s and not h)
    return b, c


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value. Under equal HR@10, b of the m = b + c discordant requests is
    X ~ Binomial(m, 1/2); the distribution is symmetric, so P(as extreme as b) = 2·P(X ≤ min(b, c)),
    capped at 1. E.g. b=0, c=10: 2·0.5^10 = 0.00195; b = c: 1. No discordant pair: 1 (no evidence)."""
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)  # exact integers, one rounding


def paired_difference_ci95(b: int, c: int, n: int) -> tuple[float, float]:
    """95 % Wald interval of HR@10(candidate) − HR@10(served) on n paired requests (Agresti 2002
    §10.1): d = (b − c)/n, se = sqrt(b + c − (b − c)²/n) / n. Reported only; the test decides."""
    d = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return d - Z95 * se, d + Z95 * se


def significant_regression(b: int, c: int, n: int, p: float, gate: Gate) -> bool:
    """Refuse only a drop that is both large enough (≥ max_regression) and unlikely under equal
    HR@10 (p < alpha). (c − b)/n is one division, so a drop of exactly max_regression compares equal."""
    drop = (c - b) / n
    return drop > 0 and drop >= gate.max_regression and p < gate.alpha


def _gate_summary(metrics: dict[str, Any]) -> str:
    """One log line of the gate's held-out comparison."""
    if "p_value" not in metrics:
        return str(metrics.get("gate_note", "no held-out evaluation"))
    d = metrics["discordant"]
    return (
        f"held-out HR@10 {metrics['hr@10']:.4f} vs version {metrics['served_version']}'s "
        f"{metrics['served_hr@10']:.4f} on {metrics['n']} paired requests, diff "
        f"{metrics['hr@10_diff']:+.4f} (95 % CI {metrics['hr@10_diff_ci95_lo']:+.4f}.."
        f"{metrics['hr@10_diff_ci95_hi']:+.4f}), discordant {d['candidate_only']}/{d['served_only']}, "
        f"{metrics['test']} p={metrics['p_value']:.3g}: no significant regression"
    )


def _version_step(serving: ServingRoot, version: int) -> int | None:
    try:
        return int(read_manifest(serving.version_path(version))["step"])
    except CheckpointError:
        return None


def notify(serving: ServingRoot, url: str, version: int, timeout_s: float) -> bool:
    """POST the server's reload URL, then poll GET <base>/version until it reports `version`."""
    base = url.rsplit("/", 1)[0]
    deadline = time.monotonic() + timeout_s
    ok = False
    try:
        req = urllib.request.Request(url, b"{}", {"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=timeout_s).read()
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{base}/version", timeout=timeout_s) as resp:
                if json.loads(resp.read()).get("version") == version:
                    ok = True
                    break
            time.sleep(0.2)
    except (OSError, ValueError) as exc:
        log.warning("serving notification %s failed: %s", url, exc)
    serving.record("notified", version=version, url=url, verified=ok)
    return ok
