"""Learner scale-out: steps/s, records/s and rollouts/s of `streamrl learn` at 1 and 2 ranks in one run
(issue #11), through the same launcher `streamrl run` uses for `learn.world_size > 1`
(`python -m streamrl.launch`, i.e. torchrun; gloo on CPU, NCCL on GPUs).

    .venv/bin/python bench/learner_scaling.py [--steps 30] [--batch 16] [--group 8] [--hidden 256]

One world (configs/world.yaml, 3000 requests, hash-encoder SIDs), the same global batch (B prompts of
G rollouts: each of N ranks rolls out B/N), the same number of optimiser steps, the same seed. The
figure is the summary's loop time (`seconds`: the steps only, not start-up). On a CPU host the ranks
share its cores, so each configuration gets the same cores: 1 rank x T threads against N ranks x T/N
threads (OMP_NUM_THREADS), with 1 rank x 1 thread beside them for the per-core view. The result is
printed as a table and one JSON line; the last losses agree when the ranks compute the one-process
gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} … failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def world(tmp: Path) -> None:
    cli = [sys.executable, "-m", "streamrl"]
    sim = ["--world", str(ROOT / "configs/world.yaml"), "--out", "e.jsonl", "--requests", "3000"]
    run([*cli, "simulate", *sim, "--truth", "truth", "--json"], tmp)
    run([*cli, "replay", "e.jsonl", "--out", "rec", "--json"], tmp)
    run(
        [*cli, "sids", "build", "--world-truth", "truth", "--out", "sids", "--encoder", "hash", "--json"], tmp
    )


def learn(tmp: Path, ranks: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    sets = [
        f"learn.batch_prompts={args.batch}",
        f"learn.group_size={args.group}",
        f"learn.model.hidden={args.hidden}",
        f"learn.model.intermediate={args.hidden * 2}",
        f"learn.model.layers={args.layers}",
        "learn.beta=0",
        "learn.device=cpu",
        "learn.tensorboard=false",
    ]
    launcher = [sys.executable, "-m", "streamrl.launch", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*launcher, "-m", "streamrl", "learn", "--records", "rec", "--sids", "sids"]
    cmd += ["--steps", str(args.steps), "--run-dir", f"run-{ranks}x{threads}", "--seed", "0"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    summary = json.loads(run(cmd, tmp, env).strip().splitlines()[-1])
    seconds = float(summary["seconds"])
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "seconds": round(seconds, 2),
        "steps_per_s": round(args.steps / seconds, 3),
        "records_per_s": round(args.steps * args.batch / seconds, 1),
        "rollouts_per_s": round(args.steps * args.batch * args.group / seconds, 1),
        "loss": summary["last"].get("loss", float("nan")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="global prompts per step (B)")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt (G)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world(tmp)
        rows = [learn(tmp, 1, args.cores, args), learn(tmp, 1, 1, args)]
        rows.append(learn(tmp, 2, max(args.cores // 2, 1), args))
    base = rows[0]["steps_per_s"]
    print(
        f"B={args.batch} G={args.group} hidden={args.hidden} layers={args.layers}, "
        f"{args.steps} steps, {args.cores} cores"
    )
    print("| ranks | threads/rank | loop s | steps/s | records/s | rollouts/s | vs 1 rank | last loss |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["steps_per_s"] / base
        print(
            f"| {r['ranks']} | {r['threads_per_rank']} | {r['seconds']} | {r['steps_per_s']} | "
            f"{r['records_per_s']} | {r['rollouts_per_s']} | {ratio:.2f}x | {r['loss']:.4f} |"
        )
    print(json.dumps({"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
