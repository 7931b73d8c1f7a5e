"""`rollback --reset-learner`: the running learner continues from the pinned version's checkpoint at
its next step boundary, once per request, with its step counter still counting up."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_world import TINY_LEARN, build_tiny_world

from streamrl.checkpoints.push import push
from streamrl.configs import load_config
from streamrl.rl.checkpointing import save
from streamrl.rl.offline import load_records
from streamrl.rl.streaming import StreamingLearner


def test_reset_request_is_honoured_once(tmp_path: Path) -> None:
    build_tiny_world(tmp_path)
    cfg = load_config(
        overrides=[
            *TINY_LEARN,
            f"serving.root={tmp_path / 'serving'}",
            f"weights.dir={tmp_path / 'weights'}",
        ]
    )
    sl = StreamingLearner(cfg, tmp_path / "sids", tmp_path / "run", seed=0)
    records = [r for r in load_records(tmp_path / "rec") if sl.learner.usable(r)]
    step = lambda: sl.learner.step(sl.learner.make_batch(records[:4]))  # noqa: E731
    step()
    save(sl.store, sl.learner)  # step 1
    assert push(sl.store, sl.serving).version == 1
    good = {k: v.clone() for k, v in sl.learner.model.state_dict().items()}
    for _ in range(3):
        step()
    save(sl.store, sl.learner)  # step 4
    assert push(sl.store, sl.serving).version == 2
    assert not all(torch.equal(good[k], v) for k, v in sl.learner.model.state_dict().items())

    sl.serving.pin(1, "v2 hurt CTR", "oncall", reset_learner=True)
    sl._next_reset_check = 0.0
    sl._maybe_reset()
    now = sl.learner.model.state_dict()
    assert all(torch.equal(good[k], now[k]) for k in good)  # the weights of version 1 (step 1)
    assert sl.learner.steps == 4  # counting goes on: the next checkpoint is 5, not 2
    assert [h["action"] for h in sl.serving.history()][-1] == "learner_reset"
    step()
    sl._next_reset_check = 0.0
    sl._maybe_reset()  # the same request is not honoured twice
    assert sl.learner.steps == 5 and [h["action"] for h in sl.serving.history()].count("learner_reset") == 1
    path = save(sl.store, sl.learner)
    assert path.name == "0000000005"
    # a restart restores the learner's posterior CTR table along with the model and counters
    sl.learner.observe(records)
    probe = sorted(sl.learner.book.sids)[:40]
    query, ts = records[0]["query"], records[-1]["ts_ms"]
    path = save(sl.store, sl.learner)
    again = StreamingLearner(cfg, tmp_path / "sids", tmp_path / "run", seed=0)
    assert again.learner.steps == 5
    assert again.learner.ctr.score(query, probe, ts) == sl.learner.ctr.score(query, probe, ts)
    assert again.learner.ctr.score(query, probe, ts) != StreamingLearner(
        cfg, tmp_path / "sids", tmp_path / "fresh", seed=0
    ).learner.ctr.score(query, probe, ts)


def test_a_request_read_again_is_held_out_once(tmp_path: Path) -> None:
    """Issue #11 §3–4: after a restart the reader may deliver held-out requests again; the gate pairs
    requests, so each is held out once (and still never trained on)."""
    build_tiny_world(tmp_path)
    cfg = load_config(overrides=[*TINY_LEARN, "push.heldout_percent=50", f"serving.root={tmp_path / 's'}"])
    sl = StreamingLearner(cfg, tmp_path / "sids", tmp_path / "run", seed=0)
    records = load_records(tmp_path / "rec")
    train = sl._split(records)
    held = len(sl.heldout)
    assert held > 0 and len(train) == len(records) - held
    again = sl._split(records)  # the same requests again
    assert len(sl.heldout) == held and {r["request_id"] for r in again} == {r["request_id"] for r in train}


def test_uneven_batches_split_over_ranks_without_losing_prompts() -> None:
    from streamrl.rl.distributed import Dist

    for n, world in ((7, 2), (1, 2), (16, 3), (4, 4)):
        shares = [Dist(r, world).share(n) for r in range(world)]
        covered = [i for s in shares for i in range(n)[s]]
        assert covered == list(range(n)), (n, world)
