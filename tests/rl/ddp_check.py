"""Run by tests/rl/test_distributed.py under torchrun (or alone): one learner step on the same global
batch of 4 prompts; rank 0 writes the summed gradient and the step's statistics as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers of tests/rl

from rl.test_anchors import _batch, _learner
from streamrl.rl import distributed

out, algo, micro = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
d = distributed.from_env(torch.device("cpu"))
learner = _learner(algo=algo, sft_weight=0.5, micro_batch=micro or None)
learner.dist = d
learner.gen.manual_seed(11)
torch.nn.utils.clip_grad_norm_ = lambda params, max_norm: torch.tensor(0.0)  # compare unclipped sums
stats = learner.step(_batch(learner))
if d.leader:
    grads = torch.cat([p.grad.reshape(-1) for p in learner.model.parameters() if p.grad is not None])
    out.write_text(json.dumps({"grad": grads.tolist(), "stats": stats.values, "skipped": stats.skipped}))
distributed.close(d)
