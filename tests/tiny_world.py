"""A tiny simulated world taken through simulate → replay → sids build with the CLI, for the learner
tests (offline and streaming) that need real records and a real codebook in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

TINY_WORLD = """
seed: 3
catalog: {items: 120, category_fanout: [3, 2, 2], merchants: 10}
users: {count: 30}
queries: {count: 20}
behaviour: {requests_per_s: 2}
"""
# A model small enough for a test step in well under a second.
TINY_LEARN = [
    "learn.batch_prompts=4",
    "learn.group_size=4",
    "learn.model.hidden=32",
    "learn.model.layers=1",
    "learn.model.heads=2",
    "learn.model.intermediate=64",
    "learn.beta=0",  # RL from a random model in tests: no KL anchor to build (beta > 0 needs one)
    # a 1-layer model trained for seconds on 20 queries names one item for all: the collapse gate
    # (tested on its own in test_checkpoints.py) would refuse every push these tests need
    "push.min_distinct_top1=0",
]


def streamrl(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def build_tiny_world(tmp: Path) -> None:
    """tmp/e.jsonl (events), tmp/truth, tmp/rec (joined records), tmp/sids (codebook)."""
    world = tmp / "world.yaml"
    world.write_text(TINY_WORLD)
    streamrl(
        "simulate",
        "--world",
        str(world),
        "--out",
        str(tmp / "e.jsonl"),
        "--requests",
        "300",
        "--truth",
        str(tmp / "truth"),
    )
    streamrl("replay", str(tmp / "e.jsonl"), "--out", str(tmp / "rec"))
    streamrl(
        "sids",
        "build",
        "--world-truth",
        str(tmp / "truth"),
        "--out",
        str(tmp / "sids"),
        "--encoder",
        "hash",
        "--levels",
        "8,4,4",
        "--unique",
        "2x8",
    )


def start_server(sets: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`streamrl serve --port 0` with `--set` pairs; returns the process and its first JSON line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrl", "serve", "--port", "0", *sets],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())
