"""Learner throughput: steps/s and rollouts/s of streamrl's learner against TRL's GRPOTrainer, with the
same tiny policy (fresh copies from one seed), the same prompts and the same shape — B prompts, G
rollouts each, L = 5 SID tokens per rollout — in one run (issue #4; target ratio >= 3x).

    make bench-learner            # installs trl into .venv (bench only), then runs this
    .venv/bin/python bench/learner_throughput.py [--steps 20] [--warmup 3] [--batch 16] [--group 8]

streamrl: `Learner.step` (algo tpma: rollouts, composite item rewards, TPMA advantages, loss, AdamW).
TRL: `GRPOTrainer.train` with num_generations=G, B*G completions per optimiser step, completions of
exactly L tokens (min = max = L new tokens), beta 0 (no reference model, as ours), one iteration per
generation, rewards from the same item lookup. Timing skips the first `--warmup` steps of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from streamrl.configs import load_config
from streamrl.rl.checkpointing import new_learner
from streamrl.rl.offline import load_records
from streamrl.rl.policy import sid_token


def bench_streamrl(train: Path, sids: Path, args: argparse.Namespace) -> tuple[float, Any, Any, list[str]]:
    cfg = load_config(
        overrides=[
            f"learn.batch_prompts={args.batch}",
            f"learn.group_size={args.group}",
            "learn.device=cpu",
            # the peer's settings: a cold model, no reference KL, unconstrained sampling
            "learn.beta=0",
            "learn.constrained=false",
        ]
    ).learn
    learner = new_learner(cfg, sids, args.seed)
    records = load_records(train)
    learner.observe(records)
    usable = [r for r in records if learner.usable(r)]
    batches = [
        usable[(i * args.batch) % len(usable) :][: args.batch] for i in range(args.warmup + args.steps)
    ]
    batches = [b if len(b) == args.batch else usable[: args.batch] for b in batches]
    for b in batches[: args.warmup]:
        learner.step(learner.make_batch(b))
    start = time.perf_counter()
    for b in batches[args.warmup :]:
        learner.step(learner.make_batch(b))
    seconds = time.perf_counter() - start
    prompts = learner.make_batch(usable[: args.batch * 8]).prompts
    return seconds, learner, cfg, prompts


def bench_trl(learner: Any, cfg: Any, prompts: list[str], args: argparse.Namespace, out: Path) -> float:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    twin = new_learner(cfg, args.sids, args.seed)  # same seed: the same initial weights as ours
    model, tok = twin.model, twin.tok
    L = learner.vocab.L
    token_to_level = {
        sid_token(lvl, c): (lvl, c) for lvl in range(L) for c in range(len(learner.vocab.level_ids[lvl]))
    }

    def item_reward(completions: list[str], **_: Any) -> list[float]:
        out_r = []
        for text in completions:
            parts = [p + ">" for p in text.split(">") if p.startswith("<")]
            codes = tuple(token_to_level[p][1] for p in parts if p in token_to_level)
            out_r.append(1.0 if codes in learner.vocab.items else 0.0)
        return out_r

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.marks.append(time.perf_counter())

    clock = Clock()
    conf = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch * args.group,
        num_generations=args.group,
        max_completion_length=L,
        generation_kwargs={"min_new_tokens": L},
        temperature=1.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=cfg.lr,
        max_grad_norm=cfg.grad_clip,
        max_steps=args.warmup + args.steps,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    data = Dataset.from_dict({"prompt": (prompts * 100)[: args.batch * (args.warmup + args.steps + 1)]})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=item_reward,
        args=conf,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],
    )
    torch.manual_seed(args.seed)
    trainer.train()
    timed = clock.marks[args.warmup - 1 :] if args.warmup else [clock.marks[0], *clock.marks]
    return timed[-1] - timed[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=1500)
    args = ap.parse_args()
    try:
        import trl
    except ImportError:
        sys.exit("bench/learner_throughput.py needs trl: run `make bench-learner` (installs it into .venv)")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    from bench.learning import prepare

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = Path(__file__).resolve().parents[1] / "configs" / "world.yaml"
        data = prepare(tmp, world, args.requests, args.seed)
        train, sids = data["train"], data["sids"]
        args.sids = sids
        ours_s, learner, cfg, prompts = bench_streamrl(train, sids, args)
        trl_s = bench_trl(learner, cfg, prompts, args, tmp / "trl")
    n = args.steps
    rollouts = n * args.batch * args.group
    res = {
        "B": args.batch,
        "G": args.group,
        "L": learner.vocab.L,
        "steps": n,
        "threads": torch.get_num_threads(),
        "trl_version": trl.__version__,
        "streamrl_steps_per_s": round(n / ours_s, 3),
        "streamrl_rollouts_per_s": round(rollouts / ours_s, 1),
        "trl_steps_per_s": round(n / trl_s, 3),
        "trl_rollouts_per_s": round(rollouts / trl_s, 1),
        "ratio": round(trl_s / ours_s, 2),
        "target": 3.0,
    }
    print(json.dumps(res))
    print(
        f"streamrl {res['streamrl_steps_per_s']} steps/s ({res['streamrl_rollouts_per_s']} rollouts/s) vs "
        f"TRL GRPOTrainer {res['trl_steps_per_s']} steps/s: ratio {res['ratio']}x (target >= 3x)"
    )


if __name__ == "__main__":
    main()
