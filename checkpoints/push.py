"""A push: the newest (or a named) checkpoint through the gate into the serving layout, then an
optional notification of the server and a check that it reports the new version.

Gate (issue #5), in order; a refusal is recorded in history.jsonl with its reason and nothing is
copied:
 1. every file matches the manifest's sha256 (a truncated or edited checkpoint is never pushed);
 2. every floating-point parameter in the model's safetensors is finite;
 3. the candidate has not collapsed: its distinct top-1 SIDs over the held-out prompts number more
    than `min_distinct_top1` × the distinct queries among them (a collapsed policy names the same few
    items for any query);
 4. held-out HR@10 (records the learner kept aside, never trained on) is not more than
    `max_regression` below that of the version now served, both measured on the same records.
    Evaluation is injected (`evaluate(folder) -> {"hr@10", "distinct_top1_share", ...} or None`) so
    this package needs no model code.
A scheduled push while serving is pinned is held (recorded as `held_push`); a push of a step that
is already the newest version is skipped without a record.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import Checkpoint, CheckpointError, CheckpointStore, read_manifest, verify

log = logging.getLogger("streamrl.push")
Evaluate = Callable[[Path], dict[str, float] | None]


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
        gate = Gate(evaluate, max_regression, min_distinct_top1)
        return _gate_and_copy(serving, ckpt, step, gate, trigger, notify_url, verify_timeout_s)


@dataclass(frozen=True)
class Gate:
    evaluate: Evaluate | None
    max_regression: float
    min_distinct_top1: float


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
    log.info("pushed step %d as version %d", ckpt.step, version)
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
    hr = cand["hr@10"]
    metrics["hr@10"] = hr
    share = cand.get("distinct_top1_share")
    if share is not None:
        metrics["distinct_top1_share"] = share
        if gate.min_distinct_top1 and share <= gate.min_distinct_top1:
            return (
                f"collapsed: {share:.3f} distinct top-1 SIDs per distinct query over "
                f"{int(cand.get('n', 0))} held-out prompts ({int(cand.get('queries', 0))} queries), "
                f"at or below push.min_distinct_top1 {gate.min_distinct_top1}"
            )
    if served is None:
        return None
    base = gate.evaluate(serving.version_path(served))
    if base is None:
        return None
    metrics["served_hr@10"] = base["hr@10"]
    metrics["served_version"] = served
    if not math.isfinite(hr) or hr < base["hr@10"] - gate.max_regression:
        return (
            f"held-out HR@10 {hr:.4f} is more than {gate.max_regression} below "
            f"version {served}'s {base['hr@10']:.4f}"
        )
    return None


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
