"""Issue #11 §1: torch.distributed scale-out, checked on gloo with 2 CPU ranks under torchrun: the
ranks' summed gradient of one step equals the one-process gradient of the same global batch (each
rank rolled out its own half), with and without micro-batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHECK = Path(__file__).with_name("ddp_check.py")


def _run(tmp: Path, ranks: int, algo: str, micro: int) -> dict:
    out = tmp / f"{algo}-{ranks}-{micro}.json"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    proc = subprocess.run(
        [*launcher, str(CHECK), str(out), algo, str(micro)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


@pytest.mark.parametrize(("algo", "micro"), [("tpma", 0), ("grpo", 1), ("sft", 0)])
def test_two_ranks_compute_the_one_process_gradient(tmp_path: Path, algo: str, micro: int) -> None:
    one, two = _run(tmp_path, 1, algo, micro), _run(tmp_path, 2, algo, micro)
    assert not one["skipped"] and not two["skipped"]
    g1, g2 = torch.tensor(one["grad"]), torch.tensor(two["grad"])
    assert float(g1.abs().sum()) > 1e-3
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    for key in ("loss", "reward_mean") if algo != "sft" else ("loss",):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-4, abs=1e-6), key


def test_streamrl_run_starts_the_learner_ranks_with_torchrun() -> None:
    from streamrl.configs import load_config
    from streamrl.supervisor import child_commands

    cfg = load_config(overrides=["learn.world_size=2", "learn.max_restarts=5", "learn.batch_prompts=16"])
    learner = next(c for c in child_commands(cfg, None, []) if c.name == "learner")
    assert learner.cmd[1:3] == ["-m", "streamrl.launch"] and "--standalone" in learner.cmd
    assert "--nproc-per-node=2" in learner.cmd and "--max-restarts=5" in learner.cmd
    assert learner.cmd[-1] == "learn" and learner.cmd[-3:-1] == ["-m", "streamrl"]
    one = next(c for c in child_commands(load_config(), None, []) if c.name == "learner")
    assert one.cmd[1:4] == ["-m", "streamrl", "learn"]
