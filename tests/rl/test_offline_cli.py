"""simulate → replay → sids build → learn → eval, on a tiny world, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_world import TINY_LEARN, build_tiny_world, streamrl
from transformers import AutoModelForCausalLM

from streamrl.rl.curves import read_scalars


def test_offline_learn_and_eval(tmp_path: Path) -> None:
    build_tiny_world(tmp_path)
    out = tmp_path / "run"
    sets = [x for o in TINY_LEARN for x in ("--set", o)]
    proc = streamrl(
        "learn",
        "--records",
        str(tmp_path / "rec"),
        "--sids",
        str(tmp_path / "sids"),
        "--steps",
        "4",
        "--run-dir",
        str(out),
        *sets,
    )
    logged = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert logged and all(v == v for v in logged[-2].values())  # finite (no NaN)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # the summary: the last line, one JSON line
    assert summary["checkpoint"].endswith("0000000004") and summary["steps"] == 4
    # every step's scalars as TensorBoard curves in the run folder, and the summary says where
    assert summary["tensorboard"] == str(out / "tensorboard")
    curves = read_scalars(out / "tensorboard")
    assert [s for s, _ in curves["train/loss"]] == [1, 2, 3, 4]
    assert {"train/reward_mean", "train/grad_norm", "train/skipped"} <= set(curves)
    assert "curves " in proc.stderr
    ckpt = out / "checkpoints" / "0000000004"  # the store's layout (checkpoints/store.py)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), local_files_only=True)  # HF format
    assert model.config.vocab_size > 256
    exported = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)  # RUN_DIR itself
    assert all(
        (a == b).all()
        for a, b in zip(exported.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert (out / "sid_codebook.parquet").exists() and not (out / "optimizer.pt").exists()
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["step"] == 4 and manifest["weights_version"] == 0
    assert {"model.safetensors", "sid_codebook.parquet", "optimizer.pt", "learner_state.json"} <= set(
        manifest["files"]
    )
    result = json.loads(
        streamrl(
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
