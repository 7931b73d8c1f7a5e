"""Checkpoint store, serving layout and push gate on plain files (no model code, no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from streamrl.checkpoints.push import HeldoutScores, push
from streamrl.checkpoints.serving import ServingError, ServingRoot
from streamrl.checkpoints.store import CheckpointError, CheckpointStore, verify


def _fill(value: float = 1.0):  # type: ignore[no-untyped-def]
    def fill(folder: Path) -> None:
        save_file({"w": torch.full((4, 4), value), "b": torch.zeros(4)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")
        (folder / "sid_codebook.parquet").write_bytes(b"codebook")
        (folder / "sub").mkdir()
        (folder / "sub" / "x.txt").write_text("nested files are hashed too")

    return fill


def _store(tmp_path: Path, steps: tuple[int, ...] = (1, 2, 3)) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "run")
    for s in steps:
        store.write(s, _fill(float(s)), {"weights_version": 7, "offsets": {"t": {"0": 10 * s}}})
    return store


def test_write_is_atomic_and_the_manifest_describes_every_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert [c.step for c in store.checkpoints()] == [1, 2, 3]
    m = verify(store.path(3))
    assert m["step"] == 3 and m["parent"] == 2 and m["weights_version"] == 7
    assert set(m["files"]) == {"model.safetensors", "config.json", "sid_codebook.parquet", "sub/x.txt"}
    assert m["codebook_sha256"] == m["files"]["sid_codebook.parquet"] and m["created"]
    assert store.path(3).name == "0000000003"
    assert not list(store.root.glob(".tmp-*"))


def test_a_failing_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.write(2, broken, {})
    assert [c.step for c in store.checkpoints()] == [1] and not list(store.root.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete", "manifest"])
def test_a_damaged_checkpoint_is_skipped_when_resuming(tmp_path: Path, damage: str) -> None:
    store = _store(tmp_path)
    model = store.path(3) / "model.safetensors"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "edit":
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "delete":
        model.unlink()
    else:
        (store.path(3) / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError):
        verify(store.path(3))
    latest = store.latest_valid()
    assert latest is not None and latest[0].step == 2


def test_retention_keeps_the_last_n_and_every_pushed_step(tmp_path: Path) -> None:
    store = _store(tmp_path, (1, 2, 3, 4, 5, 6))
    assert store.retain(2, keep={1, 3}) == [2, 4]
    assert [c.step for c in store.checkpoints()] == [1, 3, 5, 6]


def test_push_pin_resume_and_history(tmp_path: Path) -> None:
    store = _store(tmp_path)
    serving = ServingRoot(tmp_path / "serving", "m")
    assert push(store, serving, step=1).version == 1
    r = push(store, serving)  # the newest: step 3
    assert (r.pushed, r.version, r.step) == (True, 2, 3)
    assert push(store, serving).pushed is False  # step 3 is already the newest version: no copy
    assert serving.versions() == [1, 2] and serving.served() == 2
    assert verify(serving.version_path(2))["step"] == 3
    assert serving.previous_version() == 1
    policy = serving.pin(1, "CTR dropped", "oncall", reset_learner=True)
    assert policy["mode"] == "pinned" and serving.served() == 1 and serving.held()
    store.write(4, _fill(4.0), {})
    held = push(store, serving, scheduled=True)
    assert not held.pushed and "pinned to version 1" in held.reason and serving.versions() == [1, 2]
    manual = push(store, serving)  # a manual push copies the version but the pin stays
    assert manual.version == 3 and serving.served() == 1
    serving.resume("fixed", "oncall")
    assert serving.served() == 3 and not serving.held()
    actions = [h["action"] for h in serving.history()]
    assert actions == ["push", "push", "rollback", "held_push", "push", "resume"]
    rb = serving.history()[2]
    assert rb["author"] == "oncall" and rb["reason"] == "CTR dropped" and rb["previous"] == 2 and rb["at"]
    assert serving.pushed_steps() == {1, 3, 4}
    status = serving.status()
    assert status["served_version"] == 3 and [v["step"] for v in status["versions"]] == [1, 3, 4]


def test_rollback_to_a_missing_or_damaged_version_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    serving = ServingRoot(tmp_path / "serving", "m")
    push(store, serving, step=1)
    push(store, serving, step=2)
    before = (serving.policy(), len(serving.history()))
    with pytest.raises(ServingError, match="does not exist"):
        serving.pin(9, "x", None, False)
    (serving.version_path(1) / "config.json").write_text('{"edited": true}')
    with pytest.raises(ServingError, match="fails verification"):
        serving.pin(1, "x", None, False)
    with pytest.raises(ServingError, match="reason"):
        serving.pin(2, " ", None, False)
    assert (serving.policy(), len(serving.history())) == before


def test_the_gate_refuses_damaged_nonfinite_and_regressing_checkpoints(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    serving = ServingRoot(tmp_path / "serving", "m")
    assert push(store, serving).version == 1
    # 1. hashes
    store.write(2, _fill(2.0), {})
    (store.path(2) / "config.json").write_text('{"edited": true}')
    r = push(store, serving)
    assert not r.pushed and "sha256" in r.reason
    # 2. a NaN parameter
    store.write(3, _fill(float("nan")), {})
    r = push(store, serving)
    assert not r.pushed and "non-finite" in r.reason and "model.safetensors:w" in r.reason
    # 3. held-out HR@10 at least max_regression below the served version's, and significantly so, on
    # 200 paired requests: 30 both hit, 10 only the candidate, 30 only the served version (0.20 vs 0.30,
    # McNemar p = 2·P(X ≤ 10 | m=40) ≈ 0.002; tests/test_gate_stats.py covers the statistics)
    store.write(4, _fill(4.0), {})
    hits = {"0000000004": [1] * 30 + [1] * 10 + [0] * 160, "1": [1] * 30 + [0] * 10 + [1] * 30 + [0] * 130}

    def scores(p: Path) -> HeldoutScores:
        return {"hr@10": sum(hits[p.name]) / 200, "hits": hits[p.name]}

    r = push(store, serving, evaluate=scores, max_regression=0.05)
    assert not r.pushed and "HR@10 0.2000" in r.reason and r.metrics["served_hr@10"] == 0.30
    r = push(store, serving, evaluate=scores, max_regression=0.15)
    assert r.pushed and r.version == 2 and r.metrics["hr@10"] == 0.20
    refused = [h for h in serving.history() if h["action"] == "refused_push"]
    assert [h["step"] for h in refused] == [2, 3, 4] and all(h["reason"] for h in refused)
    assert serving.versions() == [1, 2]  # nothing refused was copied
    assert json.loads((serving.version_path(2) / "manifest.json").read_text())["step"] == 4


def test_the_gate_refuses_a_collapsed_candidate_even_with_a_better_hr(tmp_path: Path) -> None:
    store = _store(tmp_path, (1,))
    serving = ServingRoot(tmp_path / "serving", "m")
    assert push(store, serving).version == 1
    store.write(2, _fill(2.0), {})
    # 6 distinct top-1 SIDs for 100 distinct queries: at or below 0.1 is a collapse, whatever HR@10 says
    scores = {
        "0000000002": {"hr@10": 0.4, "distinct_top1_share": 0.06, "n": 120.0, "queries": 100.0},
        "1": {"hr@10": 0.3},
    }
    r = push(store, serving, evaluate=lambda p: scores[p.name], min_distinct_top1=0.1)
    assert not r.pushed and "collapsed" in r.reason and "0.060" in r.reason
    assert serving.history()[-1]["action"] == "refused_push" and serving.versions() == [1]
    # the same candidate with 30 distinct passes (and beats the served HR@10)
    scores["0000000002"]["distinct_top1_share"] = 0.3
    r = push(store, serving, evaluate=lambda p: scores[p.name], min_distinct_top1=0.1)
    assert r.pushed and r.version == 2 and r.metrics["distinct_top1_share"] == 0.3


def test_unreadable_policy_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    serving = ServingRoot(tmp_path / "serving", "m")
    serving.dir.mkdir(parents=True)
    (serving.dir / "policy.json").write_text("{")
    with pytest.raises(ServingError):
        serving.served()


def test_retention_skips_a_checkpoint_held_by_a_push_in_progress(tmp_path: Path) -> None:
    store = _store(tmp_path, (1, 2, 3, 4))
    with store.holding(1):
        assert store.retain(1) == [2, 3]  # 1 is held, 4 is the newest
        assert [c.step for c in store.checkpoints()] == [1, 4]
    assert store.retain(1) == [1]  # released
    with pytest.raises(CheckpointError, match="does not exist"), store.holding(2):
        pass
    serving = ServingRoot(tmp_path / "serving", "m")
    r = push(store, serving, step=2)
    assert not r.pushed and "does not exist" in r.reason and serving.history() == []


def test_a_push_is_safe_while_retention_runs_beside_it(tmp_path: Path) -> None:
    """The race a live learner had: checkpoints every few steps with keep_last small, a push
    evaluating and copying the newest one meanwhile."""
    store = _store(tmp_path, (1,))
    serving = ServingRoot(tmp_path / "serving", "m")

    def slow_eval(folder: Path) -> dict[str, float]:
        for s in range(2, 6):  # the learner writes and prunes while the push evaluates
            store.write(s, _fill(float(s)), {})
            store.retain(1)
        return {"hr@10": 0.5}

    r = push(store, serving, step=1, evaluate=slow_eval)
    assert r.pushed and r.version == 1 and verify(serving.version_path(1))["step"] == 1


def test_last_of_reads_the_newest_entry_from_the_tail(tmp_path: Path) -> None:
    serving = ServingRoot(tmp_path / "serving", "m")
    assert serving.last_of("push") is None
    for v in range(1, 400):
        serving.record("push", version=v, step=v)
        serving.record("held_push", reason="x" * 200)
    assert serving.last_of("push", tail_bytes=4096)["version"] == 399  # type: ignore[index]
    assert serving.last_of("rollback") is None
