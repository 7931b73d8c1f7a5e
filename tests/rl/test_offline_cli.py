"""simulate → replay → sids build → learn → eval, on a tiny world, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

TINY_WORLD = """
seed: 3
catalog: {items: 120, category_fanout: [3, 2, 2], merchants: 10}
users: {count: 30}
queries: {count: 20}
behaviour: {requests_per_s: 2}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_offline_learn_and_eval(tmp_path: Path) -> None:
    world = tmp_path / "world.yaml"
    world.write_text(TINY_WORLD)
    run(
        "simulate",
        "--world",
        str(world),
        "--out",
        str(tmp_path / "e.jsonl"),
        "--requests",
        "300",
        "--truth",
        str(tmp_path / "truth"),
    )
    run("replay", str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "rec"))
    run(
        "sids",
        "build",
        "--world-truth",
        str(tmp_path / "truth"),
        "--out",
        str(tmp_path / "sids"),
        "--encoder",
        "hash",
        "--levels",
        "8,4,4",
        "--unique",
        "2x8",
    )
    out = tmp_path / "run"
    proc = run(
        "learn",
        "--records",
        str(tmp_path / "rec"),
        "--sids",
        str(tmp_path / "sids"),
        "--steps",
        "4",
        "--out",
        str(out),
        "--set",
        "learn.batch_prompts=4",
        "--set",
        "learn.group_size=4",
        "--set",
        "learn.model.hidden=32",
        "--set",
        "learn.model.layers=1",
        "--set",
        "learn.model.heads=2",
        "--set",
        "learn.model.intermediate=64",
    )
    logged = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert logged and all(v == v for v in logged[-1].values())  # finite (no NaN)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)  # HF format
    assert model.config.vocab_size > 256
    result = json.loads(
        run(
            "eval",
            "--checkpoint",
            str(out),
            "--records",
            str(tmp_path / "rec"),
            "--limit",
            "20",
            "--beam",
            "8",
            "--json",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert {"hr@10", "mrr@10", "hr@10_click", "hr@10_order", "valid_sid_rate", "n"} <= set(result)
    assert result["n"] > 0 and 0.0 <= result["hr@10"] <= 1.0
